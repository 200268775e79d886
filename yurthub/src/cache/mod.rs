//! The cache: what is worth keeping for offline use (`policy`), how cached
//! lists are filtered like the apiserver would (`selectors`).

pub mod policy;
pub mod selectors;
