//! The kernel programs live in `main.rs` and its modules and are built for the
//! `bpfel-unknown-none` target by `agent/build.rs` (aya-build). This library target
//! exists so that the agent can name this crate as a build dependency; it is empty.
#![no_std]
