//! The validation every DLPack / Arrow import runs before reading: arbitrary shapes,
//! strides, data addresses, dtypes and buffer extents never panic or overflow. (Nothing is
//! dereferenced: only the arithmetic is under test.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use quantbridge::quant::DType;
use quantbridge::foreign::borrowed::{check_layout, RawTensor};

fuzz_target!(|input: &[u8]| {
    let words: Vec<i64> = input.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    let Some((&head, rest)) = words.split_first() else { return };
    let ndim = (head as u64 % 6) as usize;
    if rest.len() < 2 * ndim + 3 {
        return;
    }
    let shape = &rest[..ndim];
    let strides = &rest[ndim..2 * ndim];
    let dtype = [DType::F32, DType::F16, DType::BF16, DType::F64][(rest[2 * ndim] as u64 % 4) as usize];
    let data = rest[2 * ndim + 1] as usize as *const u8;
    let buffer = (rest[2 * ndim + 2] & 1 == 1).then(|| (data as usize & !0xff, rest[2 * ndim + 2] as usize >> 1));
    let raw = RawTensor { data, dtype, shape, strides: (head & 64 == 0).then_some(strides), buffer };
    let _ = check_layout(&raw);
});
