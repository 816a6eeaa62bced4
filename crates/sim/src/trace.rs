//! The trace: GPU nodes and pods of the Alibaba GPU cluster trace 2023 (the "openb" trace of
//! the ATC'23 FGD paper), read from its CSV files.
//!
//! A trace directory holds `openb_node_list_gpu_node.csv` (`sn,cpu_milli,memory_mib,gpu,model`)
//! and `openb_pod_list_default.csv` (`name,cpu_milli,memory_mib,num_gpu,gpu_milli,...,
//! creation_time,deletion_time,...`). Columns are found by their header name, so extra or
//! reordered columns are fine; a missing column or a value that does not parse is an error
//! naming the file, the line and the column.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// File name of the node list inside a trace directory.
pub const NODE_FILE: &str = "openb_node_list_gpu_node.csv";
/// File name of the pod list inside a trace directory.
pub const POD_FILE: &str = "openb_pod_list_default.csv";

/// Errors from reading a trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}; point --trace at a directory holding {NODE_FILE} and {POD_FILE}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The header lacks a column the simulator needs.
    #[error("{file}: the header has no `{column}` column; the header must name it")]
    MissingColumn {
        /// The file.
        file: String,
        /// The column.
        column: String,
    },
    /// A value does not parse.
    #[error("{file}:{line}: column `{column}` holds `{value}`, which is not {expected}")]
    BadValue {
        /// The file.
        file: String,
        /// 1-based line number.
        line: usize,
        /// The column.
        column: String,
        /// The text found.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// The file has no data rows.
    #[error("{file}: no data rows; the file must hold a header and at least one row")]
    Empty {
        /// The file.
        file: String,
    },
}

/// One GPU node of the trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceNode {
    /// Node name (`sn`).
    pub name: String,
    /// CPU capacity in milli-CPU.
    pub cpu_milli: u64,
    /// Main memory in MiB.
    pub memory_mib: u64,
    /// Number of GPUs.
    pub gpus: u32,
    /// The trace's GPU type (`G2`, `T4`, ...); the simulator replaces it by one MIG model.
    pub model: String,
}

/// One pod of the trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TracePod {
    /// Pod name.
    pub name: String,
    /// CPU request in milli-CPU.
    pub cpu_milli: u64,
    /// Memory request in MiB.
    pub memory_mib: u64,
    /// Number of GPUs (0 for CPU-only pods).
    pub num_gpu: u32,
    /// GPU share per GPU in milli-GPU (1000 = a whole GPU; 0 for CPU-only pods).
    pub gpu_milli: u32,
    /// Creation time, seconds from the start of the trace.
    pub creation_time: u64,
    /// Deletion time, seconds from the start of the trace.
    pub deletion_time: u64,
    /// Allowed GPU models, `|`-separated (empty: any); the column is optional.
    pub gpu_spec: String,
}

/// A trace: GPU nodes and pods, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    /// GPU nodes.
    pub nodes: Vec<TraceNode>,
    /// Pods, in file order (the real trace is sorted by creation time).
    pub pods: Vec<TracePod>,
}

impl Trace {
    /// Read `NODE_FILE` and `POD_FILE` from a directory.
    pub fn load(dir: &Path) -> Result<Trace, TraceError> {
        Trace::load_with(dir, POD_FILE)
    }

    /// Read `NODE_FILE` and the pod list `pod_file` (a file name inside `dir`, or a path).
    pub fn load_with(dir: &Path, pod_file: &str) -> Result<Trace, TraceError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| TraceError::Io { path, source })
        };
        let file = Path::new(pod_file)
            .file_name()
            .map_or(pod_file.to_string(), |f| f.to_string_lossy().into_owned());
        Ok(Trace {
            nodes: parse_nodes(&read(NODE_FILE)?)?,
            pods: parse_pods(&file, &read(pod_file)?)?,
        })
    }

    /// Parse the two CSV texts.
    pub fn parse(nodes_csv: &str, pods_csv: &str) -> Result<Trace, TraceError> {
        Ok(Trace {
            nodes: parse_nodes(nodes_csv)?,
            pods: parse_pods(POD_FILE, pods_csv)?,
        })
    }

    /// Keep the first `max_nodes` nodes and the first `max_pods` pods (`None` keeps all).
    pub fn truncate(mut self, max_nodes: Option<usize>, max_pods: Option<usize>) -> Trace {
        if let Some(n) = max_nodes {
            self.nodes.truncate(n);
        }
        if let Some(n) = max_pods {
            self.pods.truncate(n);
        }
        self
    }

    /// Keep an evenly spread `fraction` (0 < fraction ≤ 1) of the nodes: node `i` stays when
    /// `⌊(i+1)·f⌋ > ⌊i·f⌋`, so every part of the node list (and so every node shape, since the
    /// file groups them) keeps its share.
    pub fn sample_nodes(mut self, fraction: f64) -> Trace {
        if fraction >= 1.0 {
            return self;
        }
        let f = fraction.max(0.0);
        let mut i = 0usize;
        self.nodes.retain(|_| {
            let keep = ((i + 1) as f64 * f).floor() > (i as f64 * f).floor();
            i += 1;
            keep
        });
        self
    }

    /// Total GPUs over all nodes.
    pub fn gpu_count(&self) -> u64 {
        self.nodes.iter().map(|n| u64::from(n.gpus)).sum()
    }
}

/// A CSV table: header names and rows of fields, with 1-based line numbers.
struct Table<'a> {
    file: &'a str,
    header: Vec<&'a str>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Table<'a> {
    fn parse(file: &'a str, text: &'a str) -> Result<Table<'a>, TraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty());
        let header = match lines.next() {
            Some((_, h)) => h.split(',').map(str::trim).collect(),
            None => return Err(TraceError::Empty { file: file.into() }),
        };
        let rows: Vec<_> = lines.map(|(n, l)| (n, l.split(',').collect())).collect();
        if rows.is_empty() {
            return Err(TraceError::Empty { file: file.into() });
        }
        Ok(Table { file, header, rows })
    }

    fn column(&self, name: &str) -> Result<usize, TraceError> {
        self.header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| TraceError::MissingColumn {
                file: self.file.into(),
                column: name.into(),
            })
    }

    fn text(&self, row: &(usize, Vec<&'a str>), col: usize) -> &'a str {
        row.1.get(col).map_or("", |s| s.trim())
    }

    fn number<T: std::str::FromStr>(
        &self,
        row: &(usize, Vec<&'a str>),
        col: usize,
    ) -> Result<T, TraceError> {
        let v = self.text(row, col);
        v.parse().map_err(|_| TraceError::BadValue {
            file: self.file.into(),
            line: row.0,
            column: self.header[col].into(),
            value: v.into(),
            expected: "a non-negative integer".into(),
        })
    }
}

fn parse_nodes(text: &str) -> Result<Vec<TraceNode>, TraceError> {
    let t = Table::parse(NODE_FILE, text)?;
    let (sn, cpu, mem, gpu, model) = (
        t.column("sn")?,
        t.column("cpu_milli")?,
        t.column("memory_mib")?,
        t.column("gpu")?,
        t.column("model")?,
    );
    t.rows
        .iter()
        .map(|r| {
            Ok(TraceNode {
                name: t.text(r, sn).to_string(),
                cpu_milli: t.number(r, cpu)?,
                memory_mib: t.number(r, mem)?,
                gpus: t.number(r, gpu)?,
                model: t.text(r, model).to_string(),
            })
        })
        .collect()
}

fn parse_pods(file: &str, text: &str) -> Result<Vec<TracePod>, TraceError> {
    let t = Table::parse(file, text)?;
    let spec = t.column("gpu_spec").ok();
    let (name, cpu, mem, num, milli, created, deleted) = (
        t.column("name")?,
        t.column("cpu_milli")?,
        t.column("memory_mib")?,
        t.column("num_gpu")?,
        t.column("gpu_milli")?,
        t.column("creation_time")?,
        t.column("deletion_time")?,
    );
    t.rows
        .iter()
        .map(|r| {
            let pod = TracePod {
                name: t.text(r, name).to_string(),
                cpu_milli: t.number(r, cpu)?,
                memory_mib: t.number(r, mem)?,
                num_gpu: t.number(r, num)?,
                gpu_milli: t.number(r, milli)?,
                creation_time: t.number(r, created)?,
                deletion_time: t.number(r, deleted)?,
                gpu_spec: spec.map_or(String::new(), |c| t.text(r, c).to_string()),
            };
            if pod.gpu_milli > 1000 {
                return Err(TraceError::BadValue {
                    file: file.into(),
                    line: r.0,
                    column: "gpu_milli".into(),
                    value: pod.gpu_milli.to_string(),
                    expected: "a share between 0 and 1000 milli-GPU".into(),
                });
            }
            Ok(pod)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str =
        "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,96000,393216,8,G2\n";
    const PODS: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
p0,12000,16384,1,1000,,LS,Running,0,100,0\np1,6000,12288,1,460,,LS,Pending,5,90,\n";

    #[test]
    fn parses_by_header_name() {
        let t = Trace::parse(NODES, PODS).unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.gpu_count(), 10);
        assert_eq!(t.nodes[1].model, "G2");
        assert_eq!(t.pods[1].gpu_milli, 460);
        assert_eq!(t.pods[1].deletion_time, 90);
    }

    #[test]
    fn errors_name_the_file_line_and_column() {
        let bad = PODS.replace("p1,6000", "p1,six");
        let e = Trace::parse(NODES, &bad).unwrap_err().to_string();
        assert!(
            e.contains(POD_FILE)
                && e.contains(":3:")
                && e.contains("cpu_milli")
                && e.contains("six"),
            "{e}"
        );
        let e = Trace::parse("sn,cpu_milli\nx,1\n", PODS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory_mib") && e.contains(NODE_FILE), "{e}");
        let e = Trace::parse(NODES, "name\n").unwrap_err().to_string();
        assert!(e.contains("no data rows"), "{e}");
        let e = Trace::parse(NODES, &PODS.replace(",460,", ",1460,"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1460") && e.contains("gpu_milli"), "{e}");
    }

    #[test]
    fn sampling_keeps_an_even_share_of_nodes() {
        let mut nodes = String::from("sn,cpu_milli,memory_mib,gpu,model\n");
        for i in 0..100 {
            nodes.push_str(&format!("n{i},1,1,{},X\n", 1 + i / 50));
        }
        let t = Trace::parse(&nodes, PODS).unwrap();
        let s = t.clone().sample_nodes(0.1);
        assert_eq!(s.nodes.len(), 10);
        assert_eq!(s.nodes.iter().filter(|n| n.gpus == 1).count(), 5);
        assert_eq!(t.clone().sample_nodes(1.0).nodes.len(), 100);
        assert_eq!(t.sample_nodes(0.0).nodes.len(), 0);
    }

    #[test]
    fn missing_directory_names_the_files() {
        let e = Trace::load(Path::new("/nonexistent/trace"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(NODE_FILE) && e.contains("--trace"), "{e}");
    }
}
