//! The process's own readings for `/metrics`, under the names every Prometheus
//! client library uses (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! …), read from `/proc/self` at each scrape, and `bulwark_build_info`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Adds the process readings and the build information to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(Readings));
}

#[derive(Debug)]
struct Readings;

/// What `/proc/self/stat` says, in units.
struct Stat {
    cpu_seconds: f64,
    start_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
}

impl Collector for Readings {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let info = ConstGauge::new(1);
        let mut family = encoder.encode_descriptor(
            "bulwark_build_info",
            "1, labelled with the version of this bulwark binary",
            None,
            info.metric_type(),
        )?;
        info.encode(family.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        if let Some(stat) = stat() {
            let cpu = ConstCounter::new(stat.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            for (name, help, value) in [
                (
                    "process_start_time_seconds",
                    "Start time of the process since the Unix epoch, in seconds",
                    stat.start_seconds,
                ),
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory size in bytes",
                    stat.virtual_bytes as f64,
                ),
                (
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    stat.resident_bytes as f64,
                ),
            ] {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        let open = std::fs::read_dir("/proc/self/fd").map(Iterator::count);
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        for (name, help, value) in [
            (
                "process_open_fds",
                "Open file descriptors",
                open.ok().map(|n| n as i64),
            ),
            (
                "process_max_fds",
                "The limit of open file descriptors",
                limit.and_then(|l| i64::try_from(l).ok()),
            ),
        ] {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

/// `/proc/self/stat` (proc(5)), with the boot time from `/proc/stat`.
fn stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may hold spaces: fields count after it.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
    let page = rustix::param::page_size() as u64;
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        start_seconds: boot as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
    })
}
