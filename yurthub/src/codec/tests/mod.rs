//! Cross-module tests of the codec: round trips over realistic objects, checks of the
//! protobuf output against the independent k8s-pb (prost) types, lists and watch.
mod fixtures;
mod golden;
mod list_stream;
mod lists;
mod roundtrip;
mod watch;
