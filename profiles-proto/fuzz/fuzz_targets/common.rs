//! What every target does with a profile a decoder accepted: the crate's
//! boundary invariant says it has passed `validate`, so check that, then
//! fold it (`ProfileView` indexes without checks on validated data).
#![allow(dead_code)]

use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{fold, validate, FoldOptions};

pub fn accepted(data: &ProfilesData) {
    if let Err(e) = validate(data) {
        panic!("decoder returned a profile that fails validate: {e}");
    }
    let _ = fold(data, &FoldOptions::default());
}
