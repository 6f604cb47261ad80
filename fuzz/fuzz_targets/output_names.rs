//! The output-side checks on arbitrary tensor-name sets: `check_unique_output_names`
//! accepts exactly the sets with no repeated name and no `__metadata__`, and every set it
//! accepts is written and parsed back by the safetensors crate (`verify`), with each
//! tensor under its own name.
#![no_main]

use std::collections::HashSet;
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use quantbridge::files::output::{check_unique_output_names, HeaderEntry, SafetensorsWriter};
use quantbridge::files::verify;
use safetensors::Dtype;

fuzz_target!(|input: &[u8]| {
    // Names are the input's 0xff-separated pieces (lossy UTF-8: any string, quotes,
    // backslashes and control characters included), at most 64 of them.
    let names: Vec<String> = input.split(|&b| b == 0xff).take(64).map(|n| String::from_utf8_lossy(n).into_owned()).collect();
    let entries: Vec<HeaderEntry> = names
        .iter()
        .enumerate()
        .map(|(i, name)| HeaderEntry { name: name.clone(), dtype: Dtype::U8, shape: vec![i % 3], nbytes: i % 3, from: format!("entry {i}") })
        .collect();
    let mut seen = HashSet::new();
    let valid = names.iter().all(|n| n != "__metadata__" && seen.insert(n.as_str()));
    match check_unique_output_names(&entries) {
        Ok(()) => assert!(valid, "accepted a repeated or reserved name: {names:?}"),
        Err(_) => {
            assert!(!valid, "refused a valid name set: {names:?}");
            return;
        }
    }
    let path = std::env::temp_dir().join(format!("qb-fuzz-names-{}.safetensors", std::process::id()));
    let file = std::fs::File::create(&path).expect("temp file");
    let mut writer = SafetensorsWriter::create(file, &path, entries.clone(), BTreeMap::new()).expect("header");
    for e in &entries {
        writer.write(&e.name, &vec![7u8; e.nbytes]).expect("write");
    }
    writer.finish().expect("finish");
    verify::safetensors_file(&path, &entries).expect("an accepted name set reads back");
    let _ = std::fs::remove_file(&path);
});
