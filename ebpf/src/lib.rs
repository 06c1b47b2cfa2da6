//! The programs live in the `weft` binary target (src/main.rs). This library
//! target exists so the agent can build-depend on this crate: cargo then
//! rebuilds the agent, which embeds the object, whenever this crate changes.
#![no_std]
