//! Links libpcap: stream filters are compiled and matched by libpcap itself (`filter.rs`).
fn main() {
    println!("cargo:rustc-link-lib=pcap");
}
