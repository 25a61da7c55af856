//! Measuring the node's load for the scheduler.
//!
//! The scheduler counts the jobs it placed on a node itself, so what it
//! needs from the node is everything else: how busy the machine is with
//! work that is not the farm's (a developer's own build, a browser, a CI
//! job), how much memory is left for another rustc, and whether the work
//! directory has room for another job's inputs and outputs.
//!
//! A sample is cheap (about 0.1 ms: one read each of `/proc/stat`,
//! `/proc/meminfo` and `/proc/loadavg`, and one `statvfs`), so the control
//! session takes one every second and after every job start and end.
//! [`LoadSampler`] does the IO; [`report`] turns the raw readings into a
//! [`NodeLoad`] and is tested with plain numbers.

use std::path::{Path, PathBuf};

use distcc_rs_proto::message::NodeLoad;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

/// Raw readings of one sample, before clamping and scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Readings {
    /// Logical CPUs.
    pub cores: usize,
    /// Share of all CPUs' time spent busy since the previous sample, in
    /// percent (sysinfo's unit); NaN or out of range on a broken reading.
    pub cpu_busy_percent: f32,
    /// The one-minute load average.
    pub load_avg_one: f64,
    pub mem_available: u64,
    /// Free bytes in the work directory's file system, if it could be read.
    pub disk_free: Option<u64>,
}

/// Turns raw readings into the report the scheduler receives.
pub fn report(readings: &Readings, running: u32, slots: u32) -> NodeLoad {
    let busy = readings.cpu_busy_percent;
    let cpu_busy_permille = if busy.is_finite() {
        // Clamped first, so the cast cannot overflow.
        (busy.clamp(0.0, 100.0) * 10.0).round() as u16
    } else {
        0
    };
    let load = readings.load_avg_one;
    let load_avg_centi = if load.is_finite() {
        (load.clamp(0.0, f64::from(u32::MAX) / 100.0) * 100.0).round() as u32
    } else {
        0
    };
    NodeLoad {
        running,
        slots,
        cores: u32::try_from(readings.cores.max(1)).unwrap_or(u32::MAX),
        cpu_busy_permille,
        load_avg_centi,
        mem_available: readings.mem_available,
        // An unreadable work directory reports no free space: the
        // scheduler should not send jobs to a node that cannot store them.
        disk_free: readings.disk_free.unwrap_or(0),
    }
}

/// Takes load samples of this machine.
pub struct LoadSampler {
    system: System,
    work_dir: PathBuf,
}

impl std::fmt::Debug for LoadSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadSampler")
            .field("work_dir", &self.work_dir)
            .finish_non_exhaustive()
    }
}

impl LoadSampler {
    /// A sampler measuring free disk space where `work_dir` lives. Fails
    /// only where sysinfo cannot read the system at all (e.g. no `/proc`).
    pub fn new(work_dir: &Path) -> Result<LoadSampler, sysinfo::Error> {
        // Only what a sample needs: `System::new_all` would also list every
        // process (milliseconds rather than microseconds).
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_memory(MemoryRefreshKind::nothing().with_ram())
                .with_cpu(CpuRefreshKind::nothing().with_usage()),
        )?;
        Ok(LoadSampler {
            system,
            work_dir: work_dir.to_path_buf(),
        })
    }

    /// Reads the machine's state now. CPU busy share covers the time since
    /// the previous call (the first call reports what sysinfo saw since the
    /// sampler was made).
    pub fn readings(&mut self) -> Readings {
        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let disk_free = nix::sys::statvfs::statvfs(&self.work_dir)
            .ok()
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()));
        Readings {
            cores: self.system.cpus().len(),
            cpu_busy_percent: self.system.global_cpu_usage(),
            // NaN is reported as 0 by `report`; the CPU share still tells
            // the scheduler how busy the machine is.
            load_avg_one: System::load_average().map_or(f64::NAN, |l| l.one),
            mem_available: self.system.available_memory(),
            disk_free,
        }
    }

    /// A report for the scheduler, with the node's own count of running
    /// jobs and its slots.
    pub fn sample(&mut self, running: u32, slots: u32) -> NodeLoad {
        report(&self.readings(), running, slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings() -> Readings {
        Readings {
            cores: 8,
            cpu_busy_percent: 37.46,
            load_avg_one: 2.345,
            mem_available: 3 << 30,
            disk_free: Some(50 << 30),
        }
    }

    #[test]
    fn readings_are_scaled_for_the_wire() {
        let load = report(&readings(), 2, 6);
        assert_eq!(
            load,
            NodeLoad {
                running: 2,
                slots: 6,
                cores: 8,
                cpu_busy_permille: 375,
                load_avg_centi: 235,
                mem_available: 3 << 30,
                disk_free: 50 << 30,
            }
        );
    }

    #[test]
    fn broken_readings_are_clamped_not_wrapped() {
        let odd = Readings {
            cores: 0,
            cpu_busy_percent: 180.0,
            load_avg_one: -1.0,
            disk_free: None,
            ..readings()
        };
        let load = report(&odd, 0, 1);
        assert_eq!(load.cores, 1);
        assert_eq!(load.cpu_busy_permille, 1000);
        assert_eq!(load.load_avg_centi, 0);
        assert_eq!(load.disk_free, 0);

        let nan = Readings {
            cpu_busy_percent: f32::NAN,
            load_avg_one: f64::INFINITY,
            ..readings()
        };
        let load = report(&nan, 0, 1);
        assert_eq!(load.cpu_busy_permille, 0);
        assert_eq!(load.load_avg_centi, 0);
    }

    #[test]
    fn this_machine_can_be_sampled() {
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = LoadSampler::new(dir.path()).unwrap();
        let load = sampler.sample(1, 4);
        assert_eq!((load.running, load.slots), (1, 4));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(load.cores as usize, cores);
        assert!(load.mem_available > 0, "{load:?}");
        assert!(load.disk_free > 0, "{load:?}");
        assert!(load.cpu_busy_permille <= 1000, "{load:?}");
    }
}
