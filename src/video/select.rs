//! Which decoded frames a `video ... fps=N` source takes, and what they are called.
//!
//! The times are a fixed grid: t_k = k / fps, rounded to whole microseconds, from 0.
//! For fps=2 that is 0, 0.5, 1.0 …, for fps=4 0, 0.25, 0.5 …: every time of fps=N is a
//! time of fps=m·N (the same real number k/N = mk/(mN), so the same rounded value), which
//! is why raising `fps` from 2 to 4 adds frames and keeps the old ones. At each time the
//! frame taken is the one on screen then: the last frame whose timestamp is at or before
//! t (the first frame for times before it), compared exactly in integers. ffmpeg's `fps`
//! filter rounds timestamps to its output time base instead, and where it starts its
//! grid depends on the first frame, so effectc picks the frames itself from every
//! decoded frame's timestamp.

/// A clip's time base: a frame's time is `pts * num / den` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeBase {
    pub num: i64,
    pub den: i64,
}

/// Grid time `k` of `fps`, in microseconds.
pub fn target_us(k: u64, fps: f64) -> u64 {
    ((k as f64) * 1e6 / fps).round() as u64
}

/// A frame's item name: the clip's name and the grid time to the millisecond
/// (`clips/a.mp4@12.500s`). At most 240 fps, grid times lie ≥ 4 ms apart, so two times
/// of one clip never share a name.
pub fn frame_name(clip: &str, t_us: u64) -> String {
    let ms = (t_us + 500) / 1000;
    format!("{clip}@{}.{:03}s", ms / 1000, ms % 1000)
}

/// Picks frames from a stream of decoded frames in presentation order. `push` each
/// frame with its timestamp; each grid time comes out once, with the frame on screen at
/// that time.
pub struct Selector<F> {
    fps: f64,
    tb: TimeBase,
    next_k: u64,
    /// The latest frame and its timestamp, and the timestamp of the frame before it.
    last: Option<(i64, F)>,
    before_last: Option<i64>,
}

impl<F> Selector<F> {
    pub fn new(fps: f64, tb: TimeBase) -> Selector<F> {
        Selector {
            fps,
            tb,
            next_k: 0,
            last: None,
            before_last: None,
        }
    }

    /// Grid time `t_us` against timestamp `pts`, exactly (both sides scaled to integers).
    fn cmp(&self, t_us: u64, pts: i64) -> std::cmp::Ordering {
        ((t_us as i128) * (self.tb.den as i128))
            .cmp(&((pts as i128) * (self.tb.num as i128) * 1_000_000))
    }

    /// A frame with timestamp `pts`; `take(t_us, frame)` gets the previous frame once for
    /// every grid time it was on screen (it is on screen until this frame's time).
    pub fn push(
        &mut self,
        pts: i64,
        frame: F,
        take: &mut dyn FnMut(u64, &F) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if let Some((last_pts, last)) = self.last.take() {
            self.emit_until(&last, |s, t| s.cmp(t, pts).is_lt(), take)?;
            self.before_last = Some(last_pts);
        }
        self.last = Some((pts, frame));
        Ok(())
    }

    /// The stream ended: the last frame stays on screen for as long as the frame before
    /// it did (a clip of one frame: only at its own time).
    pub fn finish(
        mut self,
        take: &mut dyn FnMut(u64, &F) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let Some((last_pts, last)) = self.last.take() else {
            return Ok(());
        };
        match self.before_last {
            Some(prev) => {
                let end = last_pts + (last_pts - prev).max(0);
                self.emit_until(&last, |s, t| s.cmp(t, end).is_lt(), take)
            }
            None => self.emit_until(&last, |s, t| s.cmp(t, last_pts).is_le(), take),
        }
    }

    fn emit_until(
        &mut self,
        frame: &F,
        shown_at: impl Fn(&Self, u64) -> bool,
        take: &mut dyn FnMut(u64, &F) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        loop {
            let t = target_us(self.next_k, self.fps);
            if !shown_at(self, t) {
                return Ok(());
            }
            take(t, frame)?;
            self.next_k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grid times of `fps` taken from frames at `pts` (time base 1/1000), as (ms, frame index).
    fn pick(fps: f64, pts: &[i64]) -> Vec<(u64, usize)> {
        let mut s = Selector::new(fps, TimeBase { num: 1, den: 1000 });
        let mut out = Vec::new();
        let mut take = |t: u64, f: &usize| {
            out.push((t / 1000, *f));
            Ok(())
        };
        for (i, p) in pts.iter().enumerate() {
            s.push(*p, i, &mut take).unwrap();
        }
        s.finish(&mut take).unwrap();
        out
    }

    #[test]
    fn each_grid_time_takes_the_frame_on_screen_then() {
        // 10 fps for one second: frames at 0, 100, … 900 ms; the clip ends at 1000 ms.
        let pts: Vec<i64> = (0..10).map(|i| i * 100).collect();
        assert_eq!(pick(2.0, &pts), vec![(0, 0), (500, 5)]);
        assert_eq!(pick(4.0, &pts), vec![(0, 0), (250, 2), (500, 5), (750, 7)]);
        // A frame exactly at a grid time is on screen at that time.
        assert_eq!(pick(10.0, &pts).len(), 10);
        // Faster than the clip: frames repeat, none is skipped or invented.
        let twenty = pick(20.0, &pts);
        assert_eq!(twenty.len(), 20);
        assert_eq!(twenty[3], (150, 1));
    }

    #[test]
    fn a_slower_grid_is_a_subset_of_a_faster_one() {
        // An irregular (variable frame rate) clip with a late first frame.
        let pts = [40, 73, 180, 333, 334, 700, 1001, 1500, 1502, 2100, 2333];
        for (slow, fast) in [(1.0, 2.0), (2.0, 4.0), (3.0, 6.0), (0.5, 2.0), (2.5, 5.0)] {
            let a = pick(slow, &pts);
            let b = pick(fast, &pts);
            assert!(a.len() < b.len());
            for x in &a {
                assert!(
                    b.contains(x),
                    "fps {slow} took {x:?}, fps {fast} did not: {b:?}"
                );
            }
        }
        // Before the first frame's time the first frame is shown.
        assert_eq!(pick(4.0, &pts)[0], (0, 0));
    }

    #[test]
    fn names_carry_the_clip_and_the_time_in_milliseconds() {
        assert_eq!(frame_name("clips/a.mp4", 12_500_000), "clips/a.mp4@12.500s");
        assert_eq!(frame_name("a.mkv", target_us(1, 3.0)), "a.mkv@0.333s");
        assert_eq!(target_us(1, 3.0), target_us(2, 6.0));
        // 240 fps, the most a recipe allows: names stay distinct.
        let names: std::collections::BTreeSet<String> = (0..2400)
            .map(|k| frame_name("c", target_us(k, 240.0)))
            .collect();
        assert_eq!(names.len(), 2400);
    }

    #[test]
    fn a_one_frame_clip_gives_one_frame() {
        assert_eq!(pick(2.0, &[0]), vec![(0, 0)]);
        assert_eq!(pick(2.0, &[]), vec![]);
    }
}
