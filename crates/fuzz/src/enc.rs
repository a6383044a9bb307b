//! The inverse of `arbitrary`'s decoding, for writing seed inputs by hand.
//!
//! arbitrary 1.x decodes integers as little-endian bytes (zero-padded at the end of the
//! input), `bool` as `byte & 1`, `Option<T>` as a `bool` then `T`, arrays and structs
//! field by field, and a derived enum's variant as `(u32 as u64 * variant_count) >> 32`
//! followed by the variant's fields. [`Enc`] writes exactly that; every seed is checked by
//! a round-trip test (decode with `arbitrary`, compare with the value encoded), so a change
//! in arbitrary's format fails the tests instead of silently producing useless seeds.

/// Writes values in arbitrary's input format.
#[derive(Debug, Default, Clone)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    /// An empty input.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }

    /// A `u8`.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// A `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// An `i16`.
    pub fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// An `i8`.
    pub fn i8(&mut self, v: i8) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `bool`.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    /// Raw bytes (a fixed-size `[u8; N]`).
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }

    /// The tag of variant `index` of a derived enum with `count` variants.
    pub fn tag(&mut self, index: u32, count: u32) -> &mut Self {
        assert!(index < count, "variant {index} of {count}");
        // Smallest x with (x * count) >> 32 == index, i.e. ceil(index * 2^32 / count).
        let x = (u64::from(index) << 32).div_ceil(u64::from(count));
        let x = u32::try_from(x).expect("tag fits in u32");
        debug_assert_eq!((u64::from(x) * u64::from(count)) >> 32, u64::from(index));
        self.u32(x)
    }
}

/// A value that can write itself in arbitrary's format.
pub trait Encode {
    /// Appends `self` to `e`.
    fn encode(&self, e: &mut Enc);
}

impl Encode for u8 {
    fn encode(&self, e: &mut Enc) {
        e.u8(*self);
    }
}
impl Encode for u16 {
    fn encode(&self, e: &mut Enc) {
        e.u16(*self);
    }
}
impl Encode for u32 {
    fn encode(&self, e: &mut Enc) {
        e.u32(*self);
    }
}
impl Encode for u64 {
    fn encode(&self, e: &mut Enc) {
        e.u64(*self);
    }
}
impl Encode for i16 {
    fn encode(&self, e: &mut Enc) {
        e.i16(*self);
    }
}
impl Encode for i8 {
    fn encode(&self, e: &mut Enc) {
        e.i8(*self);
    }
}
impl Encode for bool {
    fn encode(&self, e: &mut Enc) {
        e.bool(*self);
    }
}
impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode(&self, e: &mut Enc) {
        for x in self {
            x.encode(e);
        }
    }
}
impl<A: Encode, B: Encode> Encode for (A, B) {
    fn encode(&self, e: &mut Enc) {
        self.0.encode(e);
        self.1.encode(e);
    }
}
impl<T: Encode> Encode for Option<T> {
    fn encode(&self, e: &mut Enc) {
        match self {
            None => {
                e.bool(false);
            }
            Some(x) => {
                e.bool(true);
                x.encode(e);
            }
        }
    }
}

/// Encodes a setup value followed by a sequence of operations: the layout every harness
/// decodes with [`crate::for_each_op`].
pub fn program<S: Encode, O: Encode>(setup: &S, ops: &[O]) -> Vec<u8> {
    let mut e = Enc::new();
    setup.encode(&mut e);
    for op in ops {
        op.encode(&mut e);
    }
    e.finish()
}

/// Decodes what [`program`] encoded, with the same rules the harnesses use.
pub fn decode_program<'a, S, O>(data: &'a [u8], max: usize) -> (S, Vec<O>)
where
    S: arbitrary::Arbitrary<'a>,
    O: arbitrary::Arbitrary<'a>,
{
    let mut u = arbitrary::Unstructured::new(data);
    let setup = S::arbitrary(&mut u).expect("setup decodes");
    let mut ops = Vec::new();
    crate::for_each_op(&mut u, max, |op| ops.push(op));
    (setup, ops)
}

/// Implements [`Encode`] for a derived enum: `encode_enum!(Ty, COUNT; Ty::A(x) => 0 [x], Ty::B { y, z } => 1 [y, z], Ty::C => 2 [])`.
#[macro_export]
macro_rules! encode_enum {
    ($ty:ty, $count:expr; $($pat:pat => $idx:literal [$($f:expr),*]),+ $(,)?) => {
        impl $crate::enc::Encode for $ty {
            #[allow(unused_variables)]
            fn encode(&self, e: &mut $crate::enc::Enc) {
                match self {
                    $($pat => {
                        e.tag($idx, $count);
                        $( $crate::enc::Encode::encode($f, e); )*
                    })+
                }
            }
        }
    };
}

/// Implements [`Encode`] for a struct, field by field in declaration order:
/// `encode_struct!(Ty { a, b, c })`.
#[macro_export]
macro_rules! encode_struct {
    ($ty:ty { $($field:ident),* $(,)? }) => {
        impl $crate::enc::Encode for $ty {
            fn encode(&self, e: &mut $crate::enc::Enc) {
                $( $crate::enc::Encode::encode(&self.$field, e); )*
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbitrary::{Arbitrary, Unstructured};

    #[derive(Arbitrary, Debug, PartialEq)]
    enum E {
        A,
        B(u16),
        C { x: bool, y: Option<u64> },
        D,
        F([u8; 3]),
    }
    encode_enum!(E, 5;
        E::A => 0 [],
        E::B(v) => 1 [v],
        E::C { x, y } => 2 [x, y],
        E::D => 3 [],
        E::F(a) => 4 [a],
    );

    #[test]
    fn round_trip() {
        let values = [
            E::A,
            E::B(0xbeef),
            E::C {
                x: true,
                y: Some(u64::MAX - 3),
            },
            E::C { x: false, y: None },
            E::D,
            E::F([1, 2, 3]),
        ];
        let mut e = Enc::new();
        for v in &values {
            v.encode(&mut e);
        }
        let bytes = e.finish();
        let mut u = Unstructured::new(&bytes);
        for v in &values {
            assert_eq!(&E::arbitrary(&mut u).unwrap(), v);
        }
        assert!(u.is_empty());
    }

    #[test]
    fn tags_for_many_counts() {
        for count in 1..40u32 {
            for i in 0..count {
                let mut e = Enc::new();
                e.tag(i, count);
                let x = u32::from_le_bytes(e.0[..4].try_into().unwrap());
                assert_eq!((u64::from(x) * u64::from(count)) >> 32, u64::from(i));
            }
        }
    }
}
