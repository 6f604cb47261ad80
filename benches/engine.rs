//! Engine throughput: `cargo bench --bench engine`. Compared with a plain copy of the same
//! bytes in the same run, since absolute times drift on shared machines.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use rayon::prelude::*;
use quantbridge::quant::{quantize, Allocator, BufferPool, ElemSlice, Engine, Granularity, Kernel, QuantSpec, TensorView};

const ROWS: usize = 4096;
const COLS: usize = 4096; // 64 MiB of float32

fn data() -> Vec<f32> {
    (0..ROWS * COLS).map(|i| ((i.wrapping_mul(2_654_435_761) % 10_007) as f32 / 5003.5) - 1.0).collect()
}

/// The CPU's model name (Linux), for the header every run prints: figures hold for one CPU.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|m| m.trim().to_owned()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
}

fn bench(c: &mut Criterion) {
    println!("CPU: {}; kernel path: {} (supported: {:?})", cpu_model(), Kernel::best().name(), Kernel::supported());
    let values = data();
    let mut g = c.benchmark_group("quantize_64MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((values.len() * 4) as u64));

    let mut dst = vec![0f32; values.len()];
    g.bench_function("memcpy_baseline", |b| b.iter(|| dst.copy_from_slice(&values)));
    // The read limit: every byte read once on the engine's threads (integer adds of the
    // bit patterns, which vectorize; the kernels read each input byte once too).
    g.bench_function("read_baseline", |b| {
        b.iter(|| {
            values
                .par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u32, |a, &x| a.wrapping_add(x.to_bits())))
                .reduce(|| 0, u32::wrapping_add)
        })
    });

    let view = TensorView::contiguous(ElemSlice::F32(&values), vec![ROWS, COLS]).unwrap();
    let transposed = TensorView::new(ElemSlice::F32(&values), 0, vec![COLS, ROWS], vec![1, COLS as isize]).unwrap();
    let halves: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
    let bf16_view = TensorView::contiguous(ElemSlice::BF16(&halves), vec![ROWS, COLS]).unwrap();

    let specs = [
        ("int4_g128", QuantSpec::default()),
        ("int8_channel", QuantSpec { bits: 8, granularity: Granularity::Channel, ..QuantSpec::default() }),
        ("int2_g128", QuantSpec { bits: 2, ..QuantSpec::default() }),
        ("int4_tensor", QuantSpec { granularity: Granularity::Tensor, ..QuantSpec::default() }),
    ];
    // Results go back to a pool, as a Python result does when it is freed.
    let pool = BufferPool::default();
    let engine = Engine::new(Kernel::best(), &pool);
    let run = |v: &TensorView<'_>, s: &QuantSpec| engine.quantize(v, s).unwrap().recycle(&pool);
    for (name, spec) in specs {
        g.bench_with_input(BenchmarkId::new("contiguous_f32", name), &spec, |b, s| b.iter(|| run(&view, s)));
    }
    let int4 = QuantSpec::default();
    g.bench_function("transposed_f32/int4_g128", |b| b.iter(|| run(&transposed, &int4)));
    g.bench_function("contiguous_bf16/int4_g128", |b| b.iter(|| run(&bf16_view, &int4)));
    // Each vector build this CPU runs, side by side (the default above is the widest).
    let stats = QuantSpec { stats: true, ..QuantSpec::default() };
    for kernel in Kernel::supported().into_iter().filter(|&k| k != Kernel::Portable) {
        let engine = Engine::new(kernel, &pool);
        let run = |v: &TensorView<'_>, s: &QuantSpec| engine.quantize(v, s).unwrap().recycle(&pool);
        for (name, spec) in specs.iter().take(3).chain([&("int4_g128_stats", stats)]) {
            g.bench_with_input(BenchmarkId::new(format!("{}_f32", kernel.name()), name), spec, |b, s| b.iter(|| run(&view, s)));
        }
        g.bench_function(format!("{}_bf16/int4_g128", kernel.name()), |b| b.iter(|| run(&bf16_view, &int4)));
    }
    let q = quantize(&view, &int4).unwrap();
    g.bench_function("dequantize/int4_g128", |b| b.iter(|| pool.recycle_floats(engine.dequantize(&q).unwrap())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
