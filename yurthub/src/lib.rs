//! yurthub: the edge-node reverse proxy and cache for the kube-apiserver.
pub mod storage;
