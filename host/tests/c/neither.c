/* A library that is neither a Rust plugin nor a C plugin. */
int not_a_monitor(void) { return 1; }
