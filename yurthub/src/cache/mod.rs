//! The cache: what is worth keeping for offline use and how it is kept and
//! served. Durability itself lives in `storage`; wire formats in `codec`.
//!
//! - [`policy`]: cache agents and cacheable request shapes;
//! - [`selectors`]: label/field selectors with the apiserver's grammar;
//! - [`keys`]: how requests map onto store keys, scopes and metadata;
//! - [`tee`]: the non-blocking copy of proxied responses;
//! - [`manager`]: writing teed responses to the store;
//! - [`local`]: offline answers from the store;
//! - [`endpoints`]: offline endpoints that follow the node's pods;
//! - [`patch`], [`token`]: offline updates and token requests;
//! - [`gc`]: removing what the cloud no longer has;
//! - [`hubcfg`]: extra cache agents from the `yurt-hub-cfg` ConfigMap;
//! - [`status`]: metrics and the `/v1/cache` document.

pub mod endpoints;
pub mod gc;
pub mod hubcfg;
pub mod keys;
pub mod local;
pub mod manager;
pub mod patch;
pub mod policy;
pub mod selectors;
pub mod status;
pub mod tee;
pub mod token;

pub use local::{Local, LocalRequest};
pub use manager::{CacheManager, Plan};
