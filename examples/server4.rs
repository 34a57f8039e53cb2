//! Code walk, chapter 4 under the chapter's own file name: the same program as `histogram`.
//!
//! ```console
//! $ cargo run --example server4
//! $ metaparticle call histogram-service
//! ```

#[path = "histogram.rs"]
mod histogram;

fn main() -> metaparticle::Result<()> {
    histogram::main()
}
