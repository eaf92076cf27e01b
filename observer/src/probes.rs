//! Loads the eBPF object, chooses one hook per purpose and owns the links.
//!
//! Every purpose lists its candidates in order of preference: a BTF tracepoint, then a raw
//! tracepoint, then a classic tracepoint (its record layout read from tracefs), then a kprobe
//! where one applies. A candidate is "unavailable" when its load or attach fails: the kernel's
//! answer is the test, never a feature probe (aya's `is_program_supported(Tracing)` probes with
//! fentry, which some kernels refuse while tp_btf works). Optional purposes degrade; the
//! required one (`state`) failing is a start-up error naming every refusal.
//!
//! Optional hooks are attached first, then `FLAGS` is written, then the required hook: so the
//! programs never run with switches that do not match the plan.

use std::os::fd::AsFd as _;

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
};
use observer_common::{
    OFFSETS_GLOBAL, SLOT_BITS_GLOBAL,
    event::{CloseWaitEntry, Config, RawEvent, Stat},
    flow::{Closer, FlowEntry, FlowKey, ListenKey, Owner, TupleKey},
    maps,
};
use tracing::{info, warn};

use crate::layout::Layout;

mod attach;
mod degraded;
mod error;
mod options;
mod pins;
mod plan;
mod promote;

pub use degraded::Degraded;
pub use error::Error;
pub use options::{Options, ReadHook};
use plan::reset_has_reason;
pub use plan::{HookType, PlanEntry, Purpose};
pub use promote::Promoter;

/// The eBPF object built by `build.rs`.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// The programs' maps the pool monitor reads and fills.
pub struct PoolMaps {
    /// Connection counts, by key id.
    pub flows: HashMap<MapData, u64, FlowEntry>,
    /// First closers of sockets in TIME_WAIT, by tuple.
    pub closers: HashMap<MapData, TupleKey, Closer>,
    /// Owners of listening sockets.
    pub listeners: HashMap<MapData, ListenKey, Owner>,
}

/// The loaded programs and their links. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    plan: Vec<PlanEntry>,
    stats: PerCpuArray<MapData, u64>,
    fill: PerCpuArray<MapData, u64>,
    /// `SOCKS_HELD`: sockets whose state is in the overflow map.
    overflow: Array<MapData, u64>,
    flows: Option<HashMap<MapData, u64, FlowEntry>>,
    promoter: Option<Promoter>,
    /// The programs hold aborts in `PENDING` for the reset hook (`Config::EMIT_AT_RESET`).
    hold_for_reset: bool,
    /// The read hook, with `--read-hook on-demand`.
    reads: Option<OnDemand>,
    /// What this plan leaves missing or partial.
    degraded: Vec<Degraded>,
}

/// The read hook attached only while it is needed (`--read-hook on-demand`).
struct OnDemand {
    /// The hook the plan chose: (type, kernel target, program name).
    chosen: (HookType, &'static str, &'static str),
    /// Its link while attached.
    link: Option<attach::Link>,
    /// `READS_SINCE`: since when it has been attached without a break.
    since: Array<MapData, u64>,
}

impl OnDemand {
    fn set_since(&mut self, ns: u64) -> Result<(), Error> {
        self.since.set(0, ns, 0).map_err(|source| Error::Map {
            name: maps::READS_SINCE,
            source,
        })
    }
}

impl Probes {
    /// Loads the object with `layout`'s offsets and attaches one hook per purpose, trying only
    /// `allowed` hook types, in that order.
    pub fn load(layout: &Layout, args: &Options) -> Result<Self, Error> {
        let (btf_path, allowed) = (args.btf.as_path(), args.hook_types.as_slice());
        crate::host::pin_dir(&args.pin_dir)?;
        pins::drop_stale(&args.pin_dir);
        let btf = aya::Btf::parse_file(btf_path, aya::Endianness::default()).map_err(|source| {
            Error::Btf {
                path: btf_path.display().to_string(),
                source,
            }
        })?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .default_map_pin_directory(&args.pin_dir)
            .override_global(OFFSETS_GLOBAL, &layout.offsets, true)
            .override_global(SLOT_BITS_GLOBAL, &args.socket_slots.trailing_zeros(), true)
            .map_max_entries(maps::SOCK_SLOTS, args.socket_slots)
            .load(OBJECT)?;
        pins::stamp(&mut ebpf)?;
        let (mut plan, reads) = attach_optional(&mut ebpf, &btf, layout, args)?;
        let hold_for_reset = plan
            .iter()
            .find(|p| p.purpose == Purpose::ResetReason)
            .and_then(|p| p.chosen)
            .is_some_and(|(ty, ..)| reset_has_reason(ty, layout));
        // The iterator is a BTF tracing program, as tp_btf ones are: used only where they are.
        let promoter = if allowed.contains(&HookType::TpBtf) {
            Promoter::attach(&mut ebpf, &btf, &args.pin_dir)
        } else {
            Err("tp_btf not among --hook-types".to_owned())
        };
        let promoter = match promoter {
            Ok(p) => {
                info!("CLOSE_WAIT entries promoted by iter/tcp before each scan");
                Some(p)
            }
            Err(e) => {
                warn!(reason = %e, "iter/tcp not used: CLOSE_WAIT entries inserted as sockets enter CLOSE_WAIT (more kernel time per connection)");
                None
            }
        };
        let mut config: Array<_, u32> = take(&mut ebpf, maps::CONFIG)?;
        let mut bits = if hold_for_reset {
            Config::EMIT_AT_RESET
        } else {
            0
        };
        if promoter.is_some() {
            bits |= Config::PROMOTE_CLOSE_WAIT;
        }
        config
            .set(Config::FLAGS, bits, 0)
            .map_err(|source| Error::Map {
                name: maps::CONFIG,
                source,
            })?;
        // The catch-all entry the programs count into once FLOWS is full.
        let mut flows: HashMap<_, u64, FlowEntry> = take(&mut ebpf, maps::FLOWS)?;
        flows
            .insert(FlowKey::OTHER_ID, FlowEntry::new(FlowKey::OTHER), 0)
            .map_err(|source| Error::Map {
                name: maps::FLOWS,
                source,
            })?;
        let (state, _) = attach::attach(&mut ebpf, &attach::REQUIRED, &btf, layout, allowed);
        let failed = state.chosen.is_none().then(|| state.refusals());
        plan.push(state);
        if let Some(refusals) = failed {
            return Err(Error::Required {
                purpose: attach::REQUIRED.purpose,
                refusals,
            });
        }
        let counters = take(&mut ebpf, maps::STATS)?;
        let fill = take(&mut ebpf, maps::EVENTS_FILL)?;
        let overflow = take(&mut ebpf, maps::SOCKS_HELD)?;
        let degraded = degraded::of(&plan, layout, promoter.is_some());
        Ok(Self {
            ebpf,
            plan,
            stats: counters,
            fill,
            overflow,
            flows: Some(flows),
            promoter,
            hold_for_reset,
            reads,
            degraded,
        })
    }

    /// What the plan leaves missing or partial on this kernel, and why.
    pub fn degraded(&self) -> &[Degraded] {
        &self.degraded
    }

    /// Whether the read hook is attached, when `--read-hook on-demand` decides (`None`
    /// otherwise: attached from start to stop, or not at all).
    pub fn reads_on_demand(&self) -> Option<bool> {
        self.reads.as_ref().map(|r| r.link.is_some())
    }

    /// Attaches (`on`) or detaches the on-demand read hook; does nothing when it is already so
    /// or not on demand. Attaching records the time in `READS_SINCE` first, so no read the
    /// hook records is older; detaching sets it to "never".
    pub fn watch_reads(&mut self, on: bool) -> Result<(), Error> {
        let Some(r) = self.reads.as_mut() else {
            return Ok(());
        };
        let program = r.chosen.2;
        match (on, r.link.take()) {
            (true, None) => {
                r.set_since(crate::events::decode::monotonic_ns())?;
                let link = attach::attach_loaded(&mut self.ebpf, r.chosen)
                    .map_err(|source| Error::Detach { program, source })?;
                r.link = Some(link);
            }
            (false, Some(link)) => {
                attach::detach(&mut self.ebpf, program, link)
                    .map_err(|source| Error::Detach { program, source })?;
                r.set_since(u64::MAX)?;
            }
            (_, link) => r.link = link,
        }
        Ok(())
    }

    /// Takes the map of aborts held for their reset, for the reader, which emits those whose
    /// reset never came; `None` when the programs emit aborts at once.
    pub fn take_pending(&mut self) -> Result<Option<HashMap<MapData, u64, RawEvent>>, Error> {
        if self.hold_for_reset {
            take(&mut self.ebpf, maps::PENDING).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Takes the CLOSE_WAIT promotion iterator, for the tracker; `None` where the kernel has
    /// none (entries are then inserted on entry) or it was taken already.
    pub fn take_promoter(&mut self) -> Option<Promoter> {
        self.promoter.take()
    }

    /// How each purpose was served.
    pub fn plan(&self) -> &[PlanEntry] {
        &self.plan
    }

    /// Logs the attach plan, one line per purpose.
    pub fn log_plan(&self) {
        for p in &self.plan {
            match p.chosen {
                Some((ty, target, program)) => {
                    info!(purpose = p.purpose.as_str(), hook = target, r#type = %ty, program, "probe attached");
                    if !p.refused.is_empty() {
                        warn!(purpose = p.purpose.as_str(), r#type = %ty, refused = %p.refusals(), "probe attached through a fallback");
                    }
                }
                None if p.is_skipped() => {
                    info!(
                        purpose = p.purpose.as_str(),
                        "optional probe left out with --skip-probes"
                    );
                }
                None => {
                    warn!(purpose = p.purpose.as_str(), refusals = %p.refusals(), "optional probe unavailable");
                }
            }
        }
        for d in &self.degraded {
            info!(feature = d.feature, effect = %d.effect, "degraded on this kernel");
        }
    }

    /// Takes the events ring buffer, for the reader task.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, Error> {
        take(&mut self.ebpf, maps::EVENTS)
    }

    /// Takes the pinned CLOSE_WAIT table, for the tracker.
    pub fn take_close_wait(&mut self) -> Result<HashMap<MapData, u64, CloseWaitEntry>, Error> {
        take(&mut self.ebpf, maps::CLOSE_WAIT)
    }

    /// Takes the maps of the pool monitor.
    pub fn take_pool(&mut self) -> Result<PoolMaps, Error> {
        Ok(PoolMaps {
            flows: self.flows.take().ok_or(Error::MissingMap(maps::FLOWS))?,
            closers: take(&mut self.ebpf, maps::CLOSERS)?,
            listeners: take(&mut self.ebpf, maps::LISTENERS)?,
        })
    }

    /// Takes the aya-log ring buffer reader, if the object has one.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(error = %e, "eBPF diagnostics unavailable");
                None
            }
        }
    }

    /// The most bytes seen waiting in the events ring buffer since the last call (the kernel's
    /// per-CPU high-water marks, then reset).
    pub fn take_ring_fill(&mut self) -> u64 {
        let peak = self
            .fill
            .get(&0, 0)
            .map_or(0, |v| v.iter().copied().max().unwrap_or(0));
        if let Ok(zeros) =
            aya::maps::PerCpuValues::try_from(vec![0u64; aya::util::nr_cpus().unwrap_or(1)])
        {
            let _ = self.fill.set(0, zeros, 0);
        }
        peak
    }

    /// Sockets whose state lives in the overflow map (`SOCKS`), their two slots being taken:
    /// inserted less deleted, so an entry the LRU evicted still counts.
    pub fn overflow_sockets(&self) -> u64 {
        self.overflow.get(&0, 0).unwrap_or(0)
    }

    /// For each attached program, the times the kernel skipped it because it was already
    /// running on that CPU (`bpf_prog_info.recursion_misses`, Linux 5.12): a state change or a
    /// read it did not see. Programs whose info cannot be read are left out.
    pub fn recursion_misses(&self) -> Vec<(&'static str, u64)> {
        self.plan
            .iter()
            .filter_map(|p| p.chosen)
            .filter_map(|(_, _, program)| {
                let fd = self.ebpf.program(program)?.fd().ok()?;
                Some((
                    program,
                    crate::map_read::prog_recursion_misses(fd.as_fd()).ok()?,
                ))
            })
            .collect()
    }

    /// The kernel-side counters summed over CPUs, in `Stat::ALL` order.
    pub fn stats(&self) -> [(Stat, u64); Stat::COUNT as usize] {
        Stat::ALL.map(|s| {
            let total = self.stats.get(&(s as u32), 0).map_or(0, |v| v.iter().sum());
            (s, total)
        })
    }
}

/// Attaches the optional purposes (those `--skip-probes` leaves alone), and detaches the read
/// hook again at once where `--read-hook on-demand` attaches it only when needed.
fn attach_optional(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    layout: &Layout,
    args: &Options,
) -> Result<(Vec<PlanEntry>, Option<OnDemand>), Error> {
    let allowed = args.hook_types.as_slice();
    let mut plan = Vec::new();
    let mut reads = None;
    for purpose in attach::OPTIONAL {
        if args.skip_probes.contains(&purpose.purpose) {
            plan.push(attach::skipped(purpose));
            continue;
        }
        let (entry, link) = attach::attach(ebpf, purpose, btf, layout, allowed);
        if let (Some(chosen), Some(link)) = (entry.chosen, link)
            && purpose.purpose == Purpose::Reads
            && args.read_hook == ReadHook::OnDemand
        {
            // Loaded and attached once, so the plan is the kernel's answer; attached again
            // when needed.
            attach::detach(ebpf, chosen.2, link).map_err(|source| Error::Detach {
                program: chosen.2,
                source,
            })?;
            reads = Some(OnDemand {
                chosen,
                link: None,
                since: take(ebpf, maps::READS_SINCE)?,
            });
        }
        plan.push(entry);
    }
    if let Some(r) = reads.as_mut() {
        r.set_since(u64::MAX)?;
    }
    Ok((plan, reads))
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(|source| Error::Map { name, source })
}
