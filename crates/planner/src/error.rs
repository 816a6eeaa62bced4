//! The planner's typed errors. Each names the place (node, GPU index, request id), the problem
//! and, where there is one, the fix.

/// Why a plan could not be made. Every variant is bad input; the planner itself never fails on
/// valid input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A cluster or requests document does not parse.
    #[error("{what} does not parse: {message}")]
    Parse {
        /// Which document (`cluster` or `requests`).
        what: String,
        /// The parser's message, with line and column where known.
        message: String,
    },
    /// Two nodes share a name.
    #[error("node `{node}` is listed twice; node names must be unique")]
    DuplicateNode {
        /// The repeated name.
        node: String,
    },
    /// A GPU names a model the catalog does not know.
    #[error("node `{node}` GPU {gpu}: unknown GPU model `{model}`; known models: {}", known.join(", "))]
    UnknownModel {
        /// Node name.
        node: String,
        /// GPU index on the node.
        gpu: usize,
        /// The model asked for.
        model: String,
        /// Every catalog key.
        known: Vec<String>,
    },
    /// A current MIG instance names a profile its GPU model does not have.
    #[error("node `{node}` GPU {gpu} ({model}): unknown profile `{profile}`; its profiles are {}", known.join(", "))]
    UnknownInstanceProfile {
        /// Node name.
        node: String,
        /// GPU index on the node.
        gpu: usize,
        /// The GPU's model key.
        model: String,
        /// The profile asked for.
        profile: String,
        /// The model's profiles.
        known: Vec<String>,
    },
    /// The current MIG layout of a GPU breaks a layout rule.
    #[error("node `{node}` GPU {gpu} ({model}): the current layout is invalid: {}", problems.join("; "))]
    InvalidLayout {
        /// Node name.
        node: String,
        /// GPU index on the node.
        gpu: usize,
        /// The GPU's model key.
        model: String,
        /// Every broken rule, in words.
        problems: Vec<String>,
    },
    /// A GPU's fields do not fit its mode (MIG instances on an MPS GPU, and so on).
    #[error("node `{node}` GPU {gpu}: {problem}")]
    BadGpu {
        /// Node name.
        node: String,
        /// GPU index on the node.
        gpu: usize,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Two requests share an id.
    #[error("request id `{id}` is used twice; request ids must be unique")]
    DuplicateRequest {
        /// The repeated id.
        id: String,
    },
    /// A MIG request names a profile no catalog model has.
    #[error("request `{request}`: unknown MIG profile `{profile}`; profiles of the cluster's GPUs: {}", known.join(", "))]
    UnknownRequestProfile {
        /// Request id.
        request: String,
        /// The profile asked for.
        profile: String,
        /// Profile names of the models in the cluster.
        known: Vec<String>,
    },
    /// A request is malformed (no kind, several kinds, a zero or out-of-range limit).
    #[error("request `{request}`: {problem}")]
    BadRequest {
        /// Request id (empty when the id itself is missing).
        request: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A GPU model has more (profile, placement) pairs than the planner's 64-bit layout sets hold.
    #[error("GPU model `{model}` has {candidates} (profile, placement) pairs; the planner supports at most 64")]
    ModelTooLarge {
        /// Model key.
        model: String,
        /// Its number of (profile, placement) pairs.
        candidates: usize,
    },
    /// A planner option is out of range.
    #[error("planner option {option}: {problem}")]
    BadOption {
        /// The option.
        option: String,
        /// What is wrong.
        problem: String,
    },
    /// The `exact` policy refuses an input that is too large to search exhaustively.
    #[error("the exact policy searches every layout and only takes small inputs: {detail}; use --policy tessera for this input")]
    ExactTooLarge {
        /// Which limit the input exceeds, with the numbers.
        detail: String,
    },
}
