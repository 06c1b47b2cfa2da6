//! The tests that need no root, no lab and no built package: bad input
//! refused with one clear error, property tests over everything weft
//! parses, the Kubernetes manifests, and the docs held to the code. One
//! module per topic.

// One test binary sees every dependency of the package; the lint is for
// the library.
#![allow(unused_crate_dependencies)]

mod bad_input;
mod docs;
mod manifests;
mod properties;
