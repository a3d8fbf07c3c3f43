//! verdict-probes will own the eBPF programs (C, built with clang) and their aya loader: the
//! kernel half of the metrics plane, read by the control thread.
//!
//! Nothing is implemented yet: that is the issue "The metrics plane".
