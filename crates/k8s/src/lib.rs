//! tessera on Kubernetes, cluster side: the `TesseraNode` custom resource ([`crd`]), the
//! controller that plans slices for gated pods and writes each node's desired layout
//! ([`controller`]), leader election on a Lease ([`lease`]), the node agent's cluster mode
//! ([`node`]), node sharing labels incl. nos's ([`sharing`]), the controller's web view ([`web`]), an in-process fake apiserver for tests ([`fake`]) and `tessera k8s demo`
//! ([`demo`]).

pub mod cluster_mode;
pub mod controller;
pub mod crd;
pub mod demo;
pub mod fake;
pub mod kubelet_cluster;
pub mod lease;
pub mod node;
pub mod pods;
pub mod sharing;
pub mod web;

pub use crd::{crd_yaml, TesseraNode, TesseraNodeSpec, TesseraNodeStatus};
