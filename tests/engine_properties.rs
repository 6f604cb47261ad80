//! Properties of the pure engine: the fast path equals the scalar reference bit for bit, the
//! error bound of docs/math.md holds, and packing round-trips. `PROPTEST_CASES` raises the count.

use half::{bf16, f16};
use proptest::prelude::*;
use quantbridge::quant::{
    Engine, Fresh, Kernel,
    pack, quantize, quantize_reference, read_row_major, ElemSlice, Granularity, QuantSpec, ScaleDType,
    TensorView,
};

/// A strided tensor over an owned buffer, in one of the four input dtypes.
#[derive(Debug, Clone)]
struct Case {
    values: Vec<f32>,
    dtype: u8,
    shape: Vec<usize>,
    strides: Vec<isize>,
    origin: usize,
}

enum Owned {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F64(Vec<f64>),
}

impl Case {
    fn owned(&self) -> Owned {
        match self.dtype {
            0 => Owned::F32(self.values.clone()),
            1 => Owned::F16(self.values.iter().map(|&v| f16::from_f32(v)).collect()),
            2 => Owned::BF16(self.values.iter().map(|&v| bf16::from_f32(v)).collect()),
            _ => Owned::F64(self.values.iter().map(|&v| v as f64 * 1.000_000_1).collect()),
        }
    }
}

impl Owned {
    fn view<'a>(&'a self, c: &Case) -> TensorView<'a> {
        let data = match self {
            Owned::F32(v) => ElemSlice::F32(v),
            Owned::F16(v) => ElemSlice::F16(v),
            Owned::BF16(v) => ElemSlice::BF16(v),
            Owned::F64(v) => ElemSlice::F64(v),
        };
        TensorView::new(data, c.origin, c.shape.clone(), c.strides.clone()).expect("generated layouts are valid")
    }
}

/// Values with the features that matter: zeros, constant runs, mixed signs, wide ranges.
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        3 => -10.0f32..10.0,
        1 => Just(0.0f32),
        1 => Just(2.5f32),
        1 => -1e4f32..1e4,
        1 => -1e-3f32..1e-3,
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=3, 0u8..4)
        .prop_flat_map(|(ndim, dtype)| {
            let lead = prop::collection::vec(0usize..5, ndim - 1);
            let last = prop_oneof![0usize..12, 12usize..300];
            let steps = prop::collection::vec(1usize..=2, ndim);
            let flips = prop::collection::vec(any::<bool>(), ndim);
            let bcast = prop::collection::vec(prop::bool::weighted(0.1), ndim);
            let perm = Just((0..ndim).collect::<Vec<_>>()).prop_shuffle();
            (lead, last, steps, flips, bcast, perm, Just(dtype))
        })
        .prop_flat_map(|(mut shape, last, steps, flips, bcast, perm, dtype)| {
            shape.push(last);
            let ndim = shape.len();
            // Lay the (stepped) extents out in memory in `perm` order, so dims may be transposed.
            let ext: Vec<usize> = (0..ndim).map(|d| (shape[d] * steps[d]).max(1)).collect();
            let mut phys = vec![0isize; ndim];
            let mut acc = 1isize;
            for &d in perm.iter().rev() {
                phys[d] = acc;
                acc *= ext[d] as isize;
            }
            let len = acc as usize;
            let mut origin = 0isize;
            let mut strides = vec![0isize; ndim];
            for d in 0..ndim {
                let mut s = phys[d] * steps[d] as isize;
                if bcast[d] {
                    s = 0;
                } else if flips[d] && shape[d] > 0 {
                    origin += (shape[d] as isize - 1) * s;
                    s = -s;
                }
                strides[d] = s;
            }
            let values = prop::collection::vec(value(), len);
            (values, Just(dtype), Just(shape), Just(strides), Just(origin as usize))
        })
        .prop_map(|(values, dtype, shape, strides, origin)| Case { values, dtype, shape, strides, origin })
}

/// Transposed weights (the last axis strided, consecutive rows adjacent in memory), tall
/// enough for the gathered tiles and their 16×16 and 8×8 transposes, with ragged edges.
fn transposed_case() -> impl Strategy<Value = Case> {
    (1usize..=3, 1usize..90, 1usize..200, 0u8..4)
        .prop_flat_map(|(outer, rows, cols, dtype)| {
            let values = prop::collection::vec(value(), outer * rows * cols);
            (values, Just(outer), Just(rows), Just(cols), Just(dtype))
        })
        .prop_map(|(values, outer, rows, cols, dtype)| Case {
            values,
            dtype,
            // [outer, rows, cols] laid out as [outer][cols][rows]: a batch of transposed weights.
            shape: vec![outer, rows, cols],
            strides: vec![(rows * cols) as isize, 1, rows as isize],
            origin: 0,
        })
}

fn spec() -> impl Strategy<Value = QuantSpec> {
    let granularity = prop_oneof![
        Just(Granularity::Tensor),
        Just(Granularity::Channel),
        (1usize..40).prop_map(Granularity::Group),
        Just(Granularity::Group(128)),
    ];
    let scale_dtype = prop_oneof![Just(ScaleDType::F32), Just(ScaleDType::F16), Just(ScaleDType::BF16)];
    (prop::sample::select(vec![2u8, 4, 8]), any::<bool>(), granularity, scale_dtype, any::<bool>()).prop_map(
        |(bits, symmetric, granularity, scale_dtype, pack)| QuantSpec {
            bits,
            symmetric,
            granularity,
            scale_dtype,
            pack,
            stats: true,
        },
    )
}

proptest! {
    #[test]
    fn fast_path_equals_reference(c in case(), s in spec()) {
        let owned = c.owned();
        let view = owned.view(&c);
        let fast = quantize(&view, &s).unwrap();
        let slow = quantize_reference(&view, &s).unwrap();
        // Every build of the kernels this CPU runs (portable, AVX2, AVX-512), chosen by
        // argument, with and without the statistics fused into the encode.
        let no_stats = QuantSpec { stats: false, ..s };
        for kernel in Kernel::supported() {
            let engine = Engine::new(kernel, &Fresh);
            prop_assert_eq!(&engine.quantize(&view, &s).unwrap(), &fast, "{} and the default build differ", kernel.name());
            let blocks = engine.quantize(&view, &no_stats).unwrap();
            prop_assert_eq!(&blocks.codes, &slow.codes, "{} block kernel codes differ", kernel.name());
            prop_assert_eq!(&blocks.scales, &slow.scales);
            prop_assert_eq!(&blocks.zero_points, &slow.zero_points);
        }
        prop_assert_eq!(&fast.codes, &slow.codes);
        let restored: Vec<u32> = fast.dequantize().unwrap().iter().map(|v| v.to_bits()).collect();
        let restored_ref: Vec<u32> = fast.dequantize_reference().iter().map(|v| v.to_bits()).collect();
        prop_assert_eq!(restored, restored_ref, "block dequantize differs from the scalar one");
        prop_assert_eq!(&fast.scales, &slow.scales);
        prop_assert_eq!(&fast.zero_points, &slow.zero_points);
        prop_assert_eq!(fast.layout, slow.layout);
        prop_assert_eq!(fast.stats, slow.stats, "single-chunk sums run in the same order");
    }

    #[test]
    fn transposed_views_equal_reference(c in transposed_case(), s in spec()) {
        let owned = c.owned();
        let view = owned.view(&c);
        let slow = quantize_reference(&view, &s).unwrap();
        for stats in [true, false] {
            let s = QuantSpec { stats, ..s };
            for kernel in Kernel::supported() {
                let q = Engine::new(kernel, &Fresh).quantize(&view, &s).unwrap();
                prop_assert_eq!(&q.codes, &slow.codes);
                prop_assert_eq!(&q.scales, &slow.scales);
                prop_assert_eq!(&q.zero_points, &slow.zero_points);
            }
        }
    }

    #[test]
    fn error_is_at_most_half_a_scale(c in case(), s in spec()) {
        let owned = c.owned();
        let view = owned.view(&c);
        let q = quantize(&view, &s).unwrap();
        let x = read_row_major(&view);
        let xd = q.dequantize().unwrap();
        prop_assert_eq!(x.len(), xd.len());
        for (e, (&a, &b)) in x.iter().zip(&xd).enumerate() {
            let scale = q.scales.get(q.layout.group_of(e));
            let bound = scale / 2.0 * (1.0 + 1e-5) + a.abs() * 1e-6;
            prop_assert!((a - b).abs() <= bound, "element {}: x={} x'={} scale={}", e, a, b, scale);
        }
    }

    #[test]
    fn unpack_inverts_pack(codes in prop::collection::vec(0u8..4, 0..200), bits in prop::sample::select(vec![2u8, 4, 8])) {
        let mask = ((1u16 << bits) - 1) as u8;
        let codes: Vec<u8> = codes.iter().map(|c| c & mask).collect();
        let packed = pack::pack(&codes, bits);
        prop_assert_eq!(packed.len(), pack::packed_len(codes.len(), bits));
        prop_assert_eq!(pack::unpack(&packed, bits, codes.len()), codes);
    }

    #[test]
    fn packed_and_unpacked_agree(c in case(), s in spec()) {
        let owned = c.owned();
        let view = owned.view(&c);
        let packed = quantize(&view, &QuantSpec { pack: true, ..s }).unwrap();
        let loose = quantize(&view, &QuantSpec { pack: false, ..s }).unwrap();
        let offset = if s.symmetric { 1i32 << (s.bits - 1) } else { 0 };
        let from_loose: Vec<u8> = loose.codes.iter()
            .map(|&c| if s.symmetric { (c as i8 as i32 + offset) as u8 } else { c })
            .collect();
        prop_assert_eq!(&pack::pack(&from_loose, s.bits), &packed.codes);
        prop_assert_eq!(loose.dequantize().unwrap(), packed.dequantize().unwrap());
    }
}

/// Tensors big enough for many parallel chunks, with odd row lengths so chunk starts are
/// not row starts; checked against the reference and across thread counts.
#[test]
fn multi_chunk_tensors_match_reference_on_any_thread_count() {
    let (rows, cols) = (97usize, 4099usize);
    let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.0).collect();
    let transposed_strides = vec![1isize, rows as isize];
    for (shape, strides) in [(vec![rows, cols], vec![cols as isize, 1]), (vec![cols, rows], transposed_strides)] {
        let view = TensorView::new(ElemSlice::F32(&values), 0, shape, strides).unwrap();
        for granularity in [Granularity::Group(128), Granularity::Group(5), Granularity::Channel, Granularity::Tensor] {
            for bits in [2u8, 4, 8] {
                let s = QuantSpec { bits, granularity, stats: true, ..QuantSpec::default() };
                let slow = quantize_reference(&view, &s).unwrap();
                let mut results = Vec::new();
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    results.push(pool.install(|| quantize(&view, &s).unwrap()));
                }
                assert_eq!(results[0].codes, slow.codes, "{granularity:?} {bits}");
                assert_eq!(results[0].scales, slow.scales);
                assert_eq!(results[0].zero_points, slow.zero_points);
                let a = results[0].stats.unwrap();
                let b = slow.stats.unwrap();
                assert!((a.mse - b.mse).abs() <= 1e-9 * b.mse.max(1e-30));
                assert_eq!(a.max_abs_error, b.max_abs_error);
                assert!(results.iter().all(|r| r == &results[0]), "thread count changed the result");
            }
        }
    }
}

#[test]
fn first_non_finite_is_reported_by_flat_index() {
    let mut values = vec![1.0f32; 300_000];
    values[250_001] = f32::INFINITY;
    values[200_003] = f32::NAN;
    let view = TensorView::contiguous(ElemSlice::F32(&values), vec![600, 500]).unwrap();
    for granularity in [Granularity::Group(128), Granularity::Tensor] {
        let err = quantize(&view, &QuantSpec { granularity, ..QuantSpec::default() }).unwrap_err();
        assert!(matches!(err, quantbridge::Error::NonFinite { index: 200_003, .. }), "{err:?}");
    }
}

/// Groups are found 16 at a time before they are encoded; a group in such a batch whose
/// scale overflows, or that holds a non-finite value, is still the one the error names
/// (the first in flat order), on every kernel build, and the batches around it are
/// unchanged.
#[test]
fn a_bad_group_inside_a_batch_is_the_one_reported() {
    let cols = 32 * 64; // 32 groups of 64 per row: two batches of 16
    let values: Vec<f32> = (0..4 * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
    for kernel in Kernel::supported() {
        let engine = Engine::new(kernel, &Fresh);
        for (at, bad, group) in [(cols + 20 * 64 + 3, f32::NAN, None), (2 * cols + 64 * 5, 3.0e38, Some(2 * 32 + 5))] {
            let mut values = values.clone();
            values[at] = bad;
            if bad > 0.0 {
                values[at + 1] = -3.0e38; // a range of 6e38 overflows float32
            }
            let view = TensorView::contiguous(ElemSlice::F32(&values), vec![4, cols]).unwrap();
            let err = engine.quantize(&view, &QuantSpec { granularity: Granularity::Group(64), ..QuantSpec::default() }).unwrap_err();
            match group {
                None => assert!(matches!(err, quantbridge::Error::NonFinite { index, .. } if index == at), "{}: {err:?}", kernel.name()),
                Some(g) => assert!(err.to_string().contains(&format!("group {g} ")), "{}: {err}", kernel.name()),
            }
        }
        let view = TensorView::contiguous(ElemSlice::F32(&values), vec![4, cols]).unwrap();
        for spec in [QuantSpec { granularity: Granularity::Group(64), ..QuantSpec::default() }, QuantSpec { granularity: Granularity::Group(64), symmetric: true, bits: 8, pack: false, ..QuantSpec::default() }] {
            let q = engine.quantize(&view, &spec).unwrap();
            let reference = quantize_reference(&view, &spec).unwrap();
            assert_eq!((&q.codes, &q.scales, &q.zero_points), (&reference.codes, &reference.scales, &reference.zero_points), "{}", kernel.name());
        }
    }
}

/// Every kernel build this CPU runs gives the reference's codes, scales, zero points and
/// statistics bits. A tensor of several chunks adds its chunks' sums in another order than
/// the reference's single pass, so there every build must give the same statistics bits
/// as the others, and the reference's to within rounding.
fn assert_every_build_matches_the_reference(view: &TensorView<'_>, spec: &QuantSpec) {
    let reference = quantize_reference(view, spec).unwrap();
    let one_chunk = view.numel() <= quantbridge::quant::layout::CHUNK_ELEMENTS;
    let mut first_stats = None;
    for kernel in Kernel::supported() {
        let q = Engine::new(kernel, &Fresh).quantize(view, spec).unwrap();
        assert_eq!(q.codes, reference.codes, "{} {spec:?} codes", kernel.name());
        assert_eq!(q.scales, reference.scales, "{} {spec:?} scales", kernel.name());
        assert_eq!(q.zero_points, reference.zero_points, "{} {spec:?} zero points", kernel.name());
        if one_chunk {
            assert_eq!(q.stats, reference.stats, "{} {spec:?} statistics", kernel.name());
        } else if let (Some(got), Some(want)) = (q.stats, reference.stats) {
            assert!((got.mse - want.mse).abs() <= 1e-12 * want.mse && got.max_abs_error == want.max_abs_error, "{} {spec:?}: {got:?} vs {want:?}", kernel.name());
            assert_eq!(*first_stats.get_or_insert(got), got, "{} {spec:?}: statistics differ between builds", kernel.name());
        } else {
            assert_eq!(q.stats.is_some(), reference.stats.is_some(), "{} {spec:?} statistics", kernel.name());
        }
    }
}

/// A transposed weight (gathered in blocks, its groups found 16 at a time) with a row
/// count that is not a multiple of 16, a narrower last group, every width, packing and
/// scale dtype, and half-precision inputs, gives the reference's bytes on every kernel
/// build; with statistics (gathered in tiles of whole rows, in flat order) the same
/// statistics bits too. The taller shape spans two blocks of rows, so the next block's
/// lines are requested while the first is encoded.
#[test]
fn transposed_weights_of_every_shape_and_dtype_match_the_reference() {
    for (rows, cols) in [(37usize, 200usize), (600, 192)] {
        let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
        let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        let brains: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
        let inputs = [ElemSlice::F32(&values), ElemSlice::F16(&halves), ElemSlice::BF16(&brains)];
        for data in inputs {
            // Memory holds a (cols, rows) matrix; the view is its transpose, (rows, cols).
            let view = TensorView::new(data, 0, vec![rows, cols], vec![1, rows as isize]).unwrap();
            for (bits, symmetric, pack, group, scale_dtype) in [
                (4, false, true, 64, ScaleDType::F32),
                (4, true, true, 128, ScaleDType::F16),
                (2, false, true, 40, ScaleDType::F32),
                (8, true, false, 100, ScaleDType::BF16),
                (4, true, false, 32, ScaleDType::F32),
            ] {
                for stats in [false, true] {
                    let spec = QuantSpec { bits, symmetric, pack, granularity: Granularity::Group(group), scale_dtype, stats };
                    assert_every_build_matches_the_reference(&view, &spec);
                }
            }
        }
    }
}

/// Rows of many groups whose length is a multiple of 64 are encoded a batch per kernel
/// call (`encode_groups`): every width, packing, scale dtype and input dtype, a row end
/// that leaves a short batch and a narrower last group, with and without statistics, give
/// the reference's bytes and the same statistics bits on every kernel build.
#[test]
fn batches_of_groups_match_the_reference_with_and_without_stats() {
    let (rows, cols) = (5usize, 64 * 21 + 40);
    let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
    let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
    let brains: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
    for data in [ElemSlice::F32(&values), ElemSlice::F16(&halves), ElemSlice::BF16(&brains)] {
        let view = TensorView::contiguous(data, vec![rows, cols]).unwrap();
        for (bits, symmetric, pack, group, scale_dtype) in [
            (4, false, true, 64, ScaleDType::F32),
            (4, true, true, 128, ScaleDType::F16),
            (2, false, true, 192, ScaleDType::F32),
            (8, true, false, 64, ScaleDType::BF16),
            (8, false, true, 128, ScaleDType::F32),
        ] {
            for stats in [false, true] {
                let spec = QuantSpec { bits, symmetric, pack, granularity: Granularity::Group(group), scale_dtype, stats };
                assert_every_build_matches_the_reference(&view, &spec);
            }
        }
    }
}

/// Batches are sized by the kernel (`Avx2::batch_groups`: fewer, smaller batches on
/// 256-bit vectors) and ask memory for what follows them (`Strided::after_run`): long
/// groups, whose batches hold from 2 to 16 of them, and rows that do not lie end to end
/// (a column slice, whose next row starts past memory the view does not cover) give the
/// reference's bytes and statistics on every kernel build.
#[test]
fn batch_sizes_and_column_slices_match_the_reference() {
    let (rows, cols, stored_cols) = (4usize, 1024 * 5 + 64, 1024 * 5 + 64 + 100);
    let values: Vec<f32> = (0..rows * stored_cols).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
    let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
    for data in [ElemSlice::F32(&values), ElemSlice::F16(&halves)] {
        let whole = TensorView::new(data, 0, vec![rows, stored_cols], vec![stored_cols as isize, 1]).unwrap();
        let slice = TensorView::new(data, 0, vec![rows, cols], vec![stored_cols as isize, 1]).unwrap();
        for view in [&whole, &slice] {
            for (bits, group) in [(4, 1024), (2, 256), (8, 64)] {
                for stats in [false, true] {
                    let spec = QuantSpec { bits, granularity: Granularity::Group(group), stats, ..QuantSpec::default() };
                    assert_every_build_matches_the_reference(view, &spec);
                }
            }
        }
    }
}

/// bfloat16 groups find their extremes on 16-bit keys: every non-finite kind, in every
/// lane position, is still reported at its flat index.
#[test]
fn first_non_finite_bfloat16_is_reported_by_flat_index() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for at in [0usize, 5, 15, 16, 31, 127, 130, 255] {
            let mut values: Vec<bf16> = (0..256).map(|i| bf16::from_f32(i as f32 - 100.0)).collect();
            values[at] = bf16::from_f32(bad);
            let view = TensorView::contiguous(ElemSlice::BF16(&values), vec![2, 128]).unwrap();
            let err = quantize(&view, &QuantSpec { stats: false, ..QuantSpec::default() }).unwrap_err();
            assert!(matches!(err, quantbridge::Error::NonFinite { index, .. } if index == at), "{bad} at {at}: {err:?}");
        }
    }
}

/// Transposed views are quantized in column blocks, out of flat order: the error must
/// still name the first non-finite element a row-major scan meets.
#[test]
fn first_non_finite_of_a_transposed_view_is_the_first_in_flat_order() {
    let (rows, cols) = (600usize, 500usize);
    // Stored column-major: element (r, c) at c * rows + r.
    let mut values = vec![1.0f32; rows * cols];
    values[400 * rows + 5] = f32::NAN; // (5, 400): flat 2_900, in the fourth group of its row
    values[10 * rows + 100] = f32::INFINITY; // (100, 10): flat 50_010, met first by column blocks
    let view = TensorView::new(ElemSlice::F32(&values), 0, vec![rows, cols], vec![1, rows as isize]).unwrap();
    let spec = QuantSpec { stats: false, ..QuantSpec::default() };
    let err = quantize(&view, &spec).unwrap_err();
    assert!(matches!(err, quantbridge::Error::NonFinite { index: 2_900, .. }), "{err:?}");
}

#[test]
fn zero_size_tensors_give_empty_results() {
    let values: Vec<f32> = vec![];
    for shape in [vec![0usize], vec![0, 5], vec![5, 0]] {
        let view = TensorView::contiguous(ElemSlice::F32(&values), shape.clone()).unwrap();
        let q = quantize(&view, &QuantSpec::default()).unwrap();
        assert!(q.codes.is_empty(), "{shape:?}");
        assert!(q.dequantize().unwrap().is_empty());
    }
}

/// Every kernel build this CPU runs gives the reference's bits on a tensor large enough
/// for many chunks; the builds it cannot run are named, not silently passed.
#[test]
fn every_kernel_build_the_cpu_runs_matches_the_reference() {
    let supported = Kernel::supported();
    let skipped: Vec<&str> = Kernel::ALL.iter().filter(|k| !supported.contains(k)).map(|k| k.name()).collect();
    if !skipped.is_empty() {
        eprintln!("kernel builds this CPU cannot run, so not checked here: {skipped:?}");
    }
    assert_eq!(supported[0], Kernel::Portable, "the portable build runs everywhere");
    let values: Vec<f32> = (0..257 * 300).map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
    let view = TensorView::contiguous(ElemSlice::F32(&values), vec![257, 300]).unwrap();
    for spec in [QuantSpec::default(), QuantSpec { bits: 2, symmetric: true, stats: true, ..QuantSpec::default() }] {
        let reference = quantize_reference(&view, &spec).unwrap();
        for &kernel in &supported {
            let q = Engine::new(kernel, &Fresh).quantize(&view, &spec).unwrap();
            assert_eq!(q.codes, reference.codes, "{} codes", kernel.name());
            assert_eq!(q.scales, reference.scales, "{} scales", kernel.name());
            assert_eq!(q.zero_points, reference.zero_points, "{} zero points", kernel.name());
            let restored = Engine::new(kernel, &Fresh).dequantize(&q).unwrap();
            let restored_ref = q.dequantize_reference();
            assert!(restored.iter().zip(&restored_ref).all(|(a, b)| a.to_bits() == b.to_bits()), "{} dequantize", kernel.name());
        }
    }
}
