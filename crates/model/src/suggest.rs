//! "Did you mean …": the closest known name to a mistyped one, by edit distance (strsim).

/// The candidate closest to `query` (case-insensitive optimal-string-alignment distance), if it
/// is close enough to be a plausible typo: at most a third of the longer name's length and at
/// most 3 edits, or `query` is a prefix of exactly one candidate. Ties go to the first candidate.
pub fn did_you_mean<'a, I>(query: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let q = query.trim().to_ascii_lowercase();
    if q.is_empty() {
        return None;
    }
    let mut best: Option<(usize, &'a str)> = None;
    let mut prefixed: Vec<&'a str> = Vec::new();
    for c in candidates {
        let cl = c.to_ascii_lowercase();
        if cl.starts_with(&q) && !prefixed.contains(&c) {
            prefixed.push(c);
        }
        let d = strsim::osa_distance(&q, &cl);
        let limit = (q.chars().count().max(cl.chars().count()) / 3).clamp(1, 3);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
        .or_else(|| (prefixed.len() == 1).then(|| prefixed[0]))
}

/// `; did you mean `X`?` for an error message, or nothing.
pub fn hint<'a, I>(query: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    did_you_mean(query, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let profiles = ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"];
        assert_eq!(did_you_mean("3g.40g", profiles), Some("3g.40gb"));
        assert_eq!(did_you_mean("3G.40GB", profiles), Some("3g.40gb"));
        assert_eq!(did_you_mean("7g80gb", profiles), Some("7g.80gb"));
        assert_eq!(did_you_mean("train.py", profiles), None);
        assert_eq!(did_you_mean("", profiles), None);
        let models = ["a100-40gb", "a100-80gb", "h100-80gb"];
        assert_eq!(did_you_mean("h100-80g", models), Some("h100-80gb"));
        assert_eq!(did_you_mean("h10-80gb", models), Some("h100-80gb"));
        assert_eq!(did_you_mean("h100", models), Some("h100-80gb"));
        assert_eq!(did_you_mean("rtx4090", models), None);
    }

    #[test]
    fn the_hint_reads_as_a_sentence_end() {
        assert_eq!(hint("stauts", ["status"]), "; did you mean `status`?");
        assert_eq!(hint("zzzzzz", ["status"]), "");
    }
}
