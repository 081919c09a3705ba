//! The one loop on real sources: an in-memory netmap image walked by the netmap ring code,
//! with the kernel's part played here.
