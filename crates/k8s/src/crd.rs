//! The `TesseraNode` custom resource (`tessera.dev/v1alpha1`, cluster-scoped, one per node).
//!
//! - **spec** is owned by the controller: the node's desired layout, GPU by GPU (MIG instances
//!   at exact placements; MPS shares with their memory and SM limits).
//! - **status** is owned by the node agent (status subresource): what it observed on each GPU
//!   (instances with UUIDs and whether a workload holds them), `observedGeneration` (the spec
//!   generation it last acted on) and conditions (`Converged`, `Refused`).
//!
//! The CRD's YAML is generated from these types ([`crd_yaml`]); the chart's copy under
//! `deploy/helm/tessera/crds/` is checked against it by a test.

use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of tessera's custom resources.
pub const GROUP: &str = "tessera.dev";

/// Desired layout of one node, written by the controller.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema,
)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "TesseraNode",
    plural = "tesseranodes",
    shortname = "tn",
    status = "TesseraNodeStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "One Kubernetes node's GPU slices: the desired layout (spec, owned by the tessera controller) and the observed one (status, owned by the node agent).",
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.gpuCount"),
    printcolumn(
        name = "Converged",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Converged\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TesseraNodeSpec {
    /// The GPUs whose layout the controller sets; GPUs not listed are left as they are.
    #[serde(default)]
    pub gpus: Vec<GpuLayout>,
}

/// How a GPU is shared (the node decides; the controller never changes it).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SliceMode {
    /// MIG GPU instances.
    #[default]
    Mig,
    /// MPS clients with memory and SM limits.
    Mps,
    /// Time-sliced replicas.
    Timeslice,
}

/// The desired layout of one GPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuLayout {
    /// GPU index on the node (NVML order).
    pub index: u32,
    /// Sharing mode of the GPU.
    #[serde(default)]
    pub mode: SliceMode,
    /// MIG: every GPU instance the GPU should have, by profile and placement start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<MigInstance>,
    /// MPS: the client shares the GPU should offer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mps: Vec<MpsShare>,
}

/// A MIG GPU instance at an exact placement.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct MigInstance {
    /// Profile name as `nvidia-smi` prints it, e.g. `1g.10gb`.
    pub profile: String,
    /// Placement start on the memory-slice grid.
    pub start: u8,
}

impl MigInstance {
    /// The `PROFILE@START` spec the agent reads.
    pub fn spec(&self) -> String {
        format!("{}@{}", self.profile, self.start)
    }
}

/// An MPS client share.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MpsShare {
    /// Pinned device-memory limit in MiB (`CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`).
    pub memory_mib: u64,
    /// Active-thread percentage (`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`).
    pub sm_percent: u32,
}

/// What the node agent observed, written through the status subresource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TesseraNodeStatus {
    /// The spec generation the agent last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of GPUs on the node.
    #[serde(default)]
    pub gpu_count: u32,
    /// Every GPU as observed.
    #[serde(default)]
    pub gpus: Vec<GpuStatus>,
    /// `Converged` (the GPUs match the spec) and `Refused` (a busy instance is in the way).
    #[serde(default)]
    pub conditions: Vec<NodeCondition>,
}

/// One observed GPU.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuStatus {
    /// GPU index on the node.
    pub index: u32,
    /// Catalog key of its model, e.g. `h100-80gb`.
    pub model: String,
    /// `GPU-…` UUID.
    #[serde(default)]
    pub uuid: String,
    /// Sharing mode.
    #[serde(default)]
    pub mode: SliceMode,
    /// MIG: the GPU instances that exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<ObservedInstance>,
    /// MPS: the client shares offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mps: Vec<MpsShare>,
}

/// One observed MIG instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObservedInstance {
    /// Profile name.
    pub profile: String,
    /// Placement start.
    pub start: u8,
    /// `MIG-…` UUID of its MIG device, once it has a compute instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Whether a workload holds it (processes, a prepared claim or an allocated device).
    #[serde(default)]
    pub busy: bool,
}

/// A condition of the node's slices.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCondition {
    /// `Converged` or `Refused`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One-word reason.
    #[serde(default)]
    pub reason: String,
    /// What happened, for people.
    #[serde(default)]
    pub message: String,
}

impl TesseraNodeStatus {
    /// The condition of this type, if any.
    pub fn condition(&self, type_: &str) -> Option<&NodeCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The CRD as YAML, as committed in the chart (`tessera k8s crd` prints it).
pub fn crd_yaml() -> String {
    let crd = TesseraNode::crd();
    let body = serde_yaml_ng::to_string(&crd).expect("a CRD always serializes");
    format!(
        "# Generated by `tessera k8s crd` from crates/k8s/src/crd.rs; do not edit.\n---\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_is_cluster_scoped_with_a_status_subresource() {
        let crd = TesseraNode::crd();
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.group, GROUP);
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        assert_eq!(crd.spec.names.plural, "tesseranodes");
    }

    #[test]
    fn spec_round_trips_in_camel_case() {
        let spec = TesseraNodeSpec {
            gpus: vec![GpuLayout {
                index: 1,
                mode: SliceMode::Mps,
                instances: vec![],
                mps: vec![MpsShare {
                    memory_mib: 10240,
                    sm_percent: 20,
                }],
            }],
        };
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["gpus"][0]["mps"][0]["memoryMib"], 10240);
        assert_eq!(v["gpus"][0]["mode"], "mps");
        let back: TesseraNodeSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, spec);
    }
}
