//! The tests that need no root and no lab: bad input refused with one clear
//! error, property tests over everything weft parses, the node package and
//! the Kubernetes manifests. One module per topic.

// One test binary sees every dependency of the package; the lint is for
// the library.
#![allow(unused_crate_dependencies)]

mod bad_input;
mod docs;
mod manifests;
mod packaging;
mod properties;
