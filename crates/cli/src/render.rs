//! Pure text renderers shared by commands: a MIG layout drawn on its memory-slice grid.

use tessera_model::{GpuModel, Placed};

/// Draw instances on the model's memory-slice grid, one box per instance, with an optional
/// second line per box (e.g. `busy` or a user name). Free slices show as `·`.
///
/// ```text
///  0        1        2        3        4        5        6        7
/// [3g.40gb                          ][2g.20gb         ][1g.10gb ]·
/// ```
pub fn draw_layout(model: &GpuModel, items: &[(Placed, String)]) -> String {
    let grid = usize::from(model.memory_slices);
    let mut sorted: Vec<&(Placed, String)> = items.iter().collect();
    sorted.sort_by_key(|(p, _)| *p);
    // Width of one slice: enough for every profile name inside its box, and for every label
    // as long as the picture stays within 78 columns (longer labels are cut; the profile
    // names never are).
    let cap = (78 / grid.max(1)).max(4);
    let mut w = 4usize;
    for (p, label) in &sorted {
        let size = usize::from(model.profile(p.profile).memory_slices);
        let name = (model.profile(p.profile).name.len() + 2).div_ceil(size);
        let label = (label.chars().count() + 2).div_ceil(size).min(cap);
        w = w.max(name).max(label);
    }
    let mut head = String::new();
    for i in 0..grid {
        head.push_str(&format!("{:<w$}", i));
    }
    let has_labels = sorted.iter().any(|(_, l)| !l.is_empty());
    let mut row1 = vec![String::new(); grid];
    let mut row2 = vec![String::new(); grid];
    let mut covered = vec![false; grid];
    for (p, label) in &sorted {
        let prof = model.profile(p.profile);
        let start = usize::from(p.start);
        let size = usize::from(prof.memory_slices);
        if start >= grid {
            continue;
        }
        let width = size.min(grid - start) * w;
        row1[start] = boxed(&prof.name, width);
        row2[start] = boxed(label, width);
        for c in covered.iter_mut().skip(start).take(size) {
            *c = true;
        }
        for i in start + 1..(start + size).min(grid) {
            row1[i] = String::new();
            row2[i] = String::new();
        }
    }
    let mut line1 = String::new();
    let mut line2 = String::new();
    for i in 0..grid {
        if !covered[i] {
            line1.push_str(&format!("{:<w$}", "·"));
            line2.push_str(&" ".repeat(w));
        } else {
            line1.push_str(&row1[i]);
            line2.push_str(&row2[i]);
        }
    }
    let mut out = format!("{}\n{}\n", head.trim_end(), line1.trim_end());
    if has_labels {
        out.push_str(line2.trim_end());
        out.push('\n');
    }
    out
}

fn boxed(text: &str, width: usize) -> String {
    let inner = width.saturating_sub(2);
    let mut t: String = text.chars().take(inner).collect();
    while t.chars().count() < inner {
        t.push(' ');
    }
    format!("[{t}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::Catalog;

    #[test]
    fn boxes_line_up_with_the_slice_indices() {
        let m = Catalog::builtin().lookup("a100-80gb").unwrap();
        let items: Vec<(Placed, String)> = ["3g.40gb@0", "1g.10gb@6"]
            .iter()
            .map(|s| (m.parse_spec(s).unwrap(), String::new()))
            .collect();
        let pic = draw_layout(m, &items);
        let lines: Vec<&str> = pic.lines().collect();
        assert_eq!(lines.len(), 2, "{pic}");
        let w = lines[0].find('1').unwrap();
        // 3g.40gb spans slices 0-3: its box closes right before slice 4's column.
        assert_eq!(lines[1].find(']').unwrap(), 4 * w - 1, "{pic}");
        // Slices 4, 5 and 7 are free.
        assert_eq!(lines[1].matches('·').count(), 3, "{pic}");
        let chars: Vec<char> = lines[1].chars().collect();
        assert_eq!(chars[6 * w], '[', "{pic}");
    }

    #[test]
    fn long_labels_are_cut_to_fit_78_columns_and_names_never_are() {
        let m = Catalog::builtin().lookup("h100-80gb").unwrap();
        let items: Vec<(Placed, String)> = (0..7)
            .map(|s| {
                (
                    m.parse_spec(&format!("1g.10gb@{s}")).unwrap(),
                    format!("#{s}00 a-rather-long-user-name"),
                )
            })
            .collect();
        let pic = draw_layout(m, &items);
        assert!(pic.lines().all(|l| l.chars().count() <= 78), "{pic}");
        assert_eq!(pic.matches("[1g.10gb").count(), 7, "{pic}");
        let me = [(m.parse_spec("1g.10gb+me@0").unwrap(), "x".repeat(40))];
        assert!(draw_layout(m, &me).contains("[1g.10gb+me]"));
    }

    #[test]
    fn labels_add_a_second_line() {
        let m = Catalog::builtin().lookup("a30").unwrap();
        let p = m.parse_spec("2g.12gb@2").unwrap();
        let pic = draw_layout(m, &[(p, "busy".into())]);
        assert_eq!(pic.lines().count(), 3);
        assert!(pic.lines().nth(2).unwrap().contains("[busy"));
    }
}
