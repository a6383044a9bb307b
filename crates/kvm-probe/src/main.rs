//! `pvkit-kvm-probe`: runs every probe and prints a table (probe, result, detail).

fn main() {
    let start = std::time::Instant::now();
    println!(
        "pvkit-kvm-probe: /dev/kvm is {}",
        if pvkit_kvm_probe::is_kvm_pvm() {
            "kvm_pvm"
        } else {
            "not kvm_pvm"
        }
    );
    let results = pvkit_kvm_probe::run_all();
    let w = results.iter().map(|r| r.probe.len()).max().unwrap_or(5);
    println!("{:w$}  {:8}  detail", "probe", "result");
    for r in &results {
        println!("{:w$}  {:8}  {}", r.probe, r.status.name(), r.detail);
    }
    println!(
        "({} probes in {:.1} s)",
        results.len(),
        start.elapsed().as_secs_f64()
    );
}
