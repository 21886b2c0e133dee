//! The batch codec. Arbitrary bytes: `validate`, `BatchView` and the record iterators never
//! panic, and whatever `validate` accepts decodes to exactly its header's record count.
//! Arbitrary records: encode → validate → decode gives them back.
#![no_main]

use arbitrary::Arbitrary;
use herald_format::batch::{self, BatchBuilder, BatchView, Record};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Rec {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Records(Vec<Rec>),
}

fn decode_all(bytes: &[u8]) {
    if let Ok(view) = BatchView::new(bytes) {
        for record in view.records() {
            let Ok(record) = record else { break };
            for header in record.headers() {
                std::hint::black_box(header);
            }
        }
    }
    for view in batch::batches(bytes) {
        let Ok(view) = view else { break };
        for record in view.records() {
            if record.is_err() {
                break;
            }
        }
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(bytes) => {
            decode_all(&bytes);
            if let Ok(valid) = batch::validate(&bytes, usize::MAX) {
                let view = BatchView::new(valid.bytes()).expect("a valid batch decodes");
                let n = view.records().map(|r| r.expect("a valid batch's records decode")).count();
                assert_eq!(n as u32, valid.header().record_count);
            }
        }
        Input::Records(records) => {
            if records.is_empty() {
                return;
            }
            // Timestamps far apart overflow the delta encoding; keep them in a sane window,
            // as the broker does for records it stamps.
            let records: Vec<Rec> = records
                .into_iter()
                .map(|r| Rec {
                    timestamp: r.timestamp.rem_euclid(1 << 40),
                    ..r
                })
                .collect();
            let headers: Vec<Vec<(&str, &[u8])>> = records
                .iter()
                .map(|r| r.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect())
                .collect();
            let mut builder = BatchBuilder::default();
            for (r, h) in records.iter().zip(&headers) {
                builder.push(&Record {
                    timestamp: r.timestamp,
                    key: r.key.as_deref(),
                    value: &r.value,
                    headers: h,
                });
            }
            let bytes = builder.finish();
            let valid = batch::validate(&bytes, usize::MAX).expect("an encoded batch validates");
            let view = BatchView::new(valid.bytes()).expect("decodes");
            let mut n = 0;
            for (i, (got, want)) in view.records().zip(&records).enumerate() {
                let got = got.expect("record decodes");
                assert_eq!(got.offset, i as u64);
                assert_eq!(got.timestamp, want.timestamp);
                assert_eq!(got.key, want.key.as_deref());
                assert_eq!(got.value, want.value.as_slice());
                let got_headers: Vec<(&str, &[u8])> = got.headers().collect();
                assert_eq!(got_headers, headers[i]);
                n += 1;
            }
            assert_eq!(n, records.len());
        }
    }
});
