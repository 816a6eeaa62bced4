//! One module per subcommand, and `daemon_client` for what the daemon's client commands share.

pub mod agent;
pub mod bench;
pub mod bench_plan;
pub mod bench_sharing;
pub mod cancel;
pub mod catalog;
pub mod check;
pub mod daemon_client;
pub mod demo;
pub mod demo_run;
pub mod doctor;
pub mod drain;
pub mod gpus;
pub mod k8s_node;
pub mod k8s;
pub mod layouts;
pub mod plan;
pub mod profiles;
pub mod ps;
pub mod run;
pub mod serve;
pub mod sim;
pub mod sim_gpu;
pub mod status;
