//! The `tribe` command (grows into agent, admin and demo).
fn main() {
    println!("tribe {}", env!("CARGO_PKG_VERSION"));
}
