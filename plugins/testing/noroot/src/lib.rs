//! `noroot`: a library with no flowpeek root module.
//!
//! `unsafe` policy: denied; the one allow is `#[no_mangle]` (the `unsafe_code` lint counts it,
//! since an unmangled symbol can clash with another), which the library needs to export one
//! symbol that is not abi_stable's root module.
#![deny(unsafe_code)]

/// A symbol, so that the library exports something.
// The name is unique to this test library: nothing else in the process defines `hello`.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn hello() {}
