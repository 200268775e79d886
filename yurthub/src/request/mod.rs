//! The apiserver's request vocabulary, below every module that serves
//! requests (proxy, cache, multiplexer, hub): what a request is
//! ([`RequestInfo`], [`Verb`], [`Query`]), how refusals are written
//! ([`status`]), and whether the hub may serve yet ([`Readiness`]).

pub mod caller;
pub mod info;
pub mod readiness;
pub mod status;

pub use caller::{Listener, Principal, TokenId};
pub use info::{Query, RequestInfo, Verb};
pub use readiness::Readiness;
