//! Two rules-engine processes on a real etcd.
