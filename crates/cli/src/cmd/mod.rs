//! One module per subcommand.

pub mod agent;
pub mod bench;
pub mod bench_sharing;
pub mod catalog;
pub mod check;
pub mod gpus;
pub mod layouts;
pub mod profiles;
pub mod sim;
pub mod sim_gpu;
