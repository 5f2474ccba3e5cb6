//! `rpar`: the ipcluster of rpar (profiles, `rpar cluster`, launchers, job scripts).

fn main() {
    println!("rpar {}", env!("CARGO_PKG_VERSION"));
}
