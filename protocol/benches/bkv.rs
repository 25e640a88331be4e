//! Criterion benchmarks for the bkv codec (written with the codec).
use criterion::{criterion_group, criterion_main, Criterion};

fn benches(_c: &mut Criterion) {}

criterion_group!(codec, benches);
criterion_main!(codec);
