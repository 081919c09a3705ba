//! `noroot`: a library with no flowpeek root module.

/// A symbol, so that the library exports something.
#[no_mangle]
pub extern "C" fn hello() {}
