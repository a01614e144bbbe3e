//! The slot policy: which queued stage may start now. CPU stages run side by side, up
//! to `--jobs`; an exclusive stage (training, export) runs alone; with `--gpus`, the
//! exclusive per-item stages run one per free device, side by side.

use std::collections::VecDeque;

/// The kind of slot a stage needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Cpu,
    /// Alone: nothing else runs beside it.
    Exclusive,
    /// One free GPU of `--gpus` (an exclusive per-item stage when devices are listed).
    Gpu,
}

impl Need {
    /// The slot of a stage of `resource`, per item or not, with `gpus` devices listed.
    pub fn of(resource: crate::stages::Resource, per_item: bool, gpus: usize) -> Need {
        match resource {
            crate::stages::Resource::Cpu => Need::Cpu,
            crate::stages::Resource::Exclusive if per_item && gpus > 0 => Need::Gpu,
            crate::stages::Resource::Exclusive => Need::Exclusive,
        }
    }
}

/// The slots in use while a build runs.
pub struct Slots {
    jobs: usize,
    free_gpus: VecDeque<usize>,
    gpus: usize,
    running: usize,
    exclusive_running: bool,
}

impl Slots {
    pub fn new(jobs: usize, gpus: &[usize]) -> Slots {
        Slots {
            jobs: jobs.max(1),
            free_gpus: gpus.iter().copied().collect(),
            gpus: gpus.len(),
            running: 0,
            exclusive_running: false,
        }
    }

    /// Worker threads the build needs: one per job slot or per device.
    pub fn threads(&self) -> usize {
        self.jobs.max(self.gpus)
    }

    pub fn idle(&self) -> bool {
        self.running == 0
    }

    /// Whether a stage that needs `need` may start now.
    pub fn fits(&self, need: Need) -> bool {
        if self.exclusive_running || self.running >= self.threads() {
            return false;
        }
        match need {
            Need::Gpu => !self.free_gpus.is_empty(),
            Need::Cpu => self.running < self.jobs,
            Need::Exclusive => self.running == 0,
        }
    }

    /// Takes the slot (call after [`Slots::fits`]); the GPU it runs on, for `Need::Gpu`.
    pub fn start(&mut self, need: Need) -> Option<usize> {
        self.running += 1;
        match need {
            Need::Gpu => self.free_gpus.pop_front(),
            Need::Exclusive => {
                self.exclusive_running = true;
                None
            }
            Need::Cpu => None,
        }
    }

    /// Gives back the slot of a finished stage (and its GPU).
    pub fn finish(&mut self, need: Need, gpu: Option<usize>) {
        self.running -= 1;
        if let Some(g) = gpu {
            self.free_gpus.push_back(g);
        }
        if need == Need::Exclusive {
            self.exclusive_running = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stages_run_side_by_side_up_to_jobs() {
        let mut s = Slots::new(2, &[]);
        assert!(s.fits(Need::Cpu));
        s.start(Need::Cpu);
        assert!(s.fits(Need::Cpu));
        s.start(Need::Cpu);
        assert!(!s.fits(Need::Cpu));
        s.finish(Need::Cpu, None);
        assert!(s.fits(Need::Cpu));
    }

    #[test]
    fn an_exclusive_stage_waits_for_the_others_and_runs_alone() {
        let mut s = Slots::new(4, &[]);
        s.start(Need::Cpu);
        assert!(!s.fits(Need::Exclusive), "waits for the running CPU stage");
        s.finish(Need::Cpu, None);
        assert!(s.fits(Need::Exclusive));
        s.start(Need::Exclusive);
        assert!(!s.fits(Need::Cpu) && !s.fits(Need::Exclusive));
        s.finish(Need::Exclusive, None);
        assert!(s.fits(Need::Cpu) && s.idle());
    }

    #[test]
    fn per_item_gpu_stages_take_one_free_device_each() {
        assert_eq!(
            Need::of(crate::stages::Resource::Exclusive, true, 2),
            Need::Gpu
        );
        assert_eq!(
            Need::of(crate::stages::Resource::Exclusive, true, 0),
            Need::Exclusive
        );
        assert_eq!(
            Need::of(crate::stages::Resource::Exclusive, false, 2),
            Need::Exclusive
        );
        let mut s = Slots::new(1, &[3, 5]);
        assert_eq!(s.threads(), 2, "a thread per device though --jobs 1");
        assert_eq!(s.start(Need::Gpu), Some(3));
        assert!(s.fits(Need::Gpu) && !s.fits(Need::Cpu), "--jobs 1 is taken");
        assert_eq!(s.start(Need::Gpu), Some(5));
        assert!(!s.fits(Need::Gpu), "no device free");
        s.finish(Need::Gpu, Some(3));
        assert_eq!(s.start(Need::Gpu), Some(3));
    }
}
