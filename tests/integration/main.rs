//! Cross-process tests: leader election on a real 3-member etcd cluster with
//! candidate processes that get killed, stopped and cut off.

mod election;
mod netns;
