//! verdict-bench will own the criterion benches and `verdict-load`, the open/closed-loop
//! load generator, plus the reference echo server it measures beside the engine.
//!
//! Nothing is implemented yet: that is the issue "Latency baselines".
