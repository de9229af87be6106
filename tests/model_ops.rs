//! The ops a decoder layer issues, recorded through a backend that wraps the CPU one: the
//! projections that read the same input run as one GEMM each (q, k, v and the Mamba in_proj on
//! the normed input; gate and up on the MLP's), the fused input projection runs on the main branch
//! before the attention branch forks, and the side branch issues nothing but the attention.

mod common;

use falcon_h1_kernels::model::{
    AttnShape, Backend, CpuBackend, CpuBatch, CpuKvCache, CpuState, HybridModel, MambaParams,
    SeqBatch, SsdShape, StateKind,
};
use falcon_h1_kernels::tensor::HostTensor;
use falcon_h1_kernels::Result;
use std::cell::{Cell, RefCell};

/// The CPU backend, logging every op as `branch:op detail` (branch `side` between
/// `side_branch` and `main_branch`).
#[derive(Default)]
struct Recorder {
    log: RefCell<Vec<String>>,
    on_side: Cell<bool>,
}

impl Recorder {
    fn rec(&self, op: &str) {
        let branch = if self.on_side.get() { "side" } else { "main" };
        self.log.borrow_mut().push(format!("{branch}:{op}"));
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.borrow_mut())
    }
}

impl Backend for Recorder {
    type Tensor = HostTensor;
    type Weight = HostTensor;
    type KvCache = CpuKvCache;
    type State = CpuState;
    type Batch = CpuBatch;

    fn name(&self) -> String {
        "recorder".into()
    }
    fn weight(&self, t: &HostTensor) -> Result<HostTensor> {
        self.rec(&format!("weight {:?}", t.shape));
        CpuBackend.weight(t)
    }
    fn random_weight(&self, shape: &[usize], lo: f32, hi: f32, seed: u64) -> Result<HostTensor> {
        self.rec(&format!("random_weight {shape:?}"));
        CpuBackend.random_weight(shape, lo, hi, seed)
    }
    fn side_branch(&self) -> Result<()> {
        self.rec("side_branch");
        self.on_side.set(true);
        Ok(())
    }
    fn main_branch(&self) {
        self.on_side.set(false);
        self.rec("main_branch");
    }
    fn join_branches(&self) -> Result<()> {
        self.on_side.set(false);
        self.rec("join_branches");
        Ok(())
    }
    fn prepare_batch(
        &self,
        batch: &SeqBatch,
        ids: &[u32],
        cache_slots: usize,
        capacity: usize,
    ) -> Result<CpuBatch> {
        CpuBackend.prepare_batch(batch, ids, cache_slots, capacity)
    }
    fn embedding(&self, table: &HostTensor, batch: &CpuBatch) -> Result<HostTensor> {
        self.rec("embedding");
        CpuBackend.embedding(table, batch)
    }
    fn linear(&self, x: &HostTensor, w: &HostTensor) -> Result<HostTensor> {
        self.rec(&format!("linear {:?}", w.shape));
        CpuBackend.linear(x, w)
    }
    fn rms_norm(&self, x: &HostTensor, w: &HostTensor, eps: f32) -> Result<HostTensor> {
        self.rec("rms_norm");
        CpuBackend.rms_norm(x, w, eps)
    }
    fn add_assign(&self, x: &mut HostTensor, y: &HostTensor) -> Result<()> {
        self.rec("add_assign");
        CpuBackend.add_assign(x, y)
    }
    fn linear_add(&self, x: &HostTensor, w: &HostTensor, out: &mut HostTensor) -> Result<()> {
        self.rec(&format!("linear_add {:?}", w.shape));
        CpuBackend.linear_add(x, w, out)
    }
    fn split_cols(&self, x: &HostTensor, widths: &[usize]) -> Result<Vec<HostTensor>> {
        self.rec(&format!("split_cols {widths:?}"));
        CpuBackend.split_cols(x, widths)
    }
    fn select_rows(&self, x: &HostTensor, rows: &[usize]) -> Result<HostTensor> {
        self.rec("select_rows");
        CpuBackend.select_rows(x, rows)
    }
    fn swiglu(&self, gate: &HostTensor, up: &HostTensor) -> Result<HostTensor> {
        self.rec("swiglu");
        CpuBackend.swiglu(gate, up)
    }
    fn gate_output(
        &self,
        y: &HostTensor,
        z: &HostTensor,
        norm: Option<&HostTensor>,
        groups: usize,
        eps: f32,
        norm_before_gate: bool,
    ) -> Result<HostTensor> {
        self.rec("gate_output");
        CpuBackend.gate_output(y, z, norm, groups, eps, norm_before_gate)
    }
    fn new_kv_cache(&self, slots: usize, capacity: usize, shape: AttnShape) -> Result<CpuKvCache> {
        CpuBackend.new_kv_cache(slots, capacity, shape)
    }
    fn new_state(&self, slots: usize, width: usize, kind: StateKind) -> Result<CpuState> {
        CpuBackend.new_state(slots, width, kind)
    }
    fn reset_state(&self, state: &mut CpuState, slot: usize) -> Result<()> {
        CpuBackend.reset_state(state, slot)
    }
    fn attention(
        &self,
        q: HostTensor,
        k: &HostTensor,
        v: &HostTensor,
        cache: &mut CpuKvCache,
        batch: &CpuBatch,
        shape: AttnShape,
        rope_theta: f64,
    ) -> Result<HostTensor> {
        self.rec("attention");
        CpuBackend.attention(q, k, v, cache, batch, shape, rope_theta)
    }
    fn conv1d_silu(
        &self,
        x: &HostTensor,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
        state: &mut CpuState,
        batch: &CpuBatch,
        width: usize,
    ) -> Result<HostTensor> {
        self.rec("conv1d_silu");
        CpuBackend.conv1d_silu(x, weight, bias, state, batch, width)
    }
    fn ssd(
        &self,
        x: &HostTensor,
        dt: &HostTensor,
        b: &HostTensor,
        c: &HostTensor,
        params: MambaParams<'_, HostTensor>,
        state: &mut CpuState,
        batch: &CpuBatch,
        shape: SsdShape,
    ) -> Result<HostTensor> {
        self.rec("ssd");
        CpuBackend.ssd(x, dt, b, c, params, state, batch, shape)
    }
    fn to_host(&self, x: &HostTensor) -> Result<HostTensor> {
        CpuBackend.to_host(x)
    }
}

/// The ops of every layer of `cfg`'s shape, in order, on a model whose weights the backend made.
#[test]
fn each_layer_runs_five_gemms_and_the_side_branch_only_attends() {
    for name in ["tiny", "g2_nbg", "mup_05b", "len1"] {
        let dir = common::data_dir().join(name);
        let (cfg, w) = falcon_h1_kernels::load_model_dir(&dir, false).unwrap();
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (hq, hkv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let (ds, conv, h) = (cfg.mamba_d_ssm, cfg.conv_dim(), cfg.mamba_n_heads);
        let gn = cfg.mamba_n_groups * cfg.mamba_d_state;
        let fused = (hq + 2 * hkv) * hd + cfg.in_proj_dim();
        let layer: Vec<String> = [
            "main:rms_norm".to_string(),
            format!("main:linear [{fused}, {d}]"),
            format!(
                "main:split_cols [{}, {}, {}, {ds}, {conv}, {h}]",
                hq * hd,
                hkv * hd,
                hkv * hd
            ),
            "main:side_branch".into(),
            "side:attention".into(),
            "main:main_branch".into(),
            "main:conv1d_silu".into(),
            format!("main:split_cols [{ds}, {gn}, {gn}]"),
            "main:ssd".into(),
            "main:gate_output".into(),
            format!("main:linear_add [{d}, {ds}]"),
            "main:join_branches".into(),
            format!("main:linear_add [{d}, {}]", hq * hd),
            "main:rms_norm".into(),
            format!("main:linear [{}, {d}]", 2 * i),
            format!("main:split_cols [{i}, {i}]"),
            "main:swiglu".into(),
            format!("main:linear_add [{d}, {i}]"),
        ]
        .into();
        let mut want = vec!["main:embedding".to_string()];
        for _ in 0..cfg.num_hidden_layers {
            want.extend(layer.iter().cloned());
        }
        want.extend([
            "main:rms_norm".to_string(),
            format!("main:linear [{}, {d}]", cfg.vocab_size),
        ]);

        // From checkpoint weights: the fused matrices are uploaded, not their parts.
        let m = HybridModel::new(Recorder::default(), cfg.clone(), &w).unwrap();
        let uploaded = m.backend().take();
        assert!(uploaded.contains(&format!("main:weight [{fused}, {d}]")));
        assert!(uploaded.contains(&format!("main:weight [{}, {d}]", 2 * i)));
        assert!(!uploaded.contains(&format!("main:weight [{}, {d}]", hkv * hd)));
        let got = m.prefill_all(&[&[1, 2, 3]], false).unwrap();
        assert_eq!(m.backend().take(), want, "{name}");
        // The recorder only delegates: the logits are the CPU model's.
        let cpu = common::cpu_model(name);
        assert_eq!(
            got.logits,
            cpu.prefill_all(&[&[1, 2, 3]], false).unwrap().logits
        );

        // Random weights made on the backend have the same fused layout.
        let r = HybridModel::random(Recorder::default(), cfg.clone(), 3).unwrap();
        let made = r.backend().take();
        assert!(made.contains(&format!("main:random_weight [{fused}, {d}]")));
        assert!(made.contains(&format!("main:random_weight [{}, {d}]", 2 * i)));
        let logits = r.prefill_all(&[&[1, 2, 3]], false).unwrap().logits.unwrap();
        assert!(logits.data.iter().all(|v| v.is_finite()));
        assert_eq!(r.backend().take(), want, "{name} (random weights)");
    }
}
