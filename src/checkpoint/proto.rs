//! The few protobuf wire-format pieces CRIU's RPC needs (proto2, `images/rpc.proto`): varints,
//! length-delimited fields and nested messages. Written by hand so that no code generator or
//! protobuf runtime is needed at build time.

/// An encoder appending fields to a buffer.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

impl Enc {
    fn key(&mut self, field: u32, wire: u8) {
        varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
    }
    pub fn uint(&mut self, field: u32, v: u64) -> &mut Self {
        self.key(field, 0);
        varint(&mut self.0, v);
        self
    }
    /// int32 (negative values are sign-extended to 64 bits, as protobuf wants).
    pub fn int(&mut self, field: u32, v: i32) -> &mut Self {
        self.uint(field, i64::from(v) as u64)
    }
    pub fn bool(&mut self, field: u32, v: bool) -> &mut Self {
        self.uint(field, u64::from(v))
    }
    /// A bool field written only when set (absent = false for every option we send).
    pub fn flag(&mut self, field: u32, v: bool) -> &mut Self {
        if v {
            self.bool(field, true);
        }
        self
    }
    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.key(field, 2);
        varint(&mut self.0, v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
    pub fn str(&mut self, field: u32, v: &str) -> &mut Self {
        self.bytes(field, v.as_bytes())
    }
    pub fn msg(&mut self, field: u32, m: &Enc) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

/// One decoded field: a varint or a length-delimited payload (fixed32/64 are skipped).
#[derive(Debug, PartialEq)]
pub enum Val<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

/// Decode the top-level fields of a message; `None` on malformed input.
pub fn decode(mut b: &[u8]) -> Option<Vec<(u32, Val<'_>)>> {
    fn read_varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = vec![];
    while !b.is_empty() {
        let key = read_varint(&mut b)?;
        let field = u32::try_from(key >> 3).ok()?;
        match key & 7 {
            0 => out.push((field, Val::Int(read_varint(&mut b)?))),
            2 => {
                let n = usize::try_from(read_varint(&mut b)?).ok()?;
                if n > b.len() {
                    return None;
                }
                let (v, rest) = b.split_at(n);
                out.push((field, Val::Bytes(v)));
                b = rest;
            }
            1 => b = b.get(8..)?,
            5 => b = b.get(4..)?,
            _ => return None,
        }
    }
    Some(out)
}

/// The last varint value of `field` (protobuf: the last one wins).
pub fn get_int(fields: &[(u32, Val)], field: u32) -> Option<u64> {
    fields.iter().rev().find_map(|(f, v)| match v {
        Val::Int(i) if *f == field => Some(*i),
        _ => None,
    })
}

pub fn get_bytes<'a>(fields: &[(u32, Val<'a>)], field: u32) -> Option<&'a [u8]> {
    fields.iter().rev().find_map(|(f, v)| match v {
        Val::Bytes(b) if *f == field => Some(*b),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trip() {
        let mut inner = Enc::default();
        inner.int(1, -1).str(2, "x");
        let mut e = Enc::default();
        e.uint(1, 300).flag(3, false).bool(4, true).msg(5, &inner);
        // 300 = 0xac 0x02; the unset flag is absent.
        assert_eq!(&e.0[..3], &[0x08, 0xac, 0x02]);
        let f = decode(&e.0).unwrap();
        assert_eq!(get_int(&f, 1), Some(300));
        assert_eq!(get_int(&f, 3), None);
        assert_eq!(get_int(&f, 4), Some(1));
        let inner = decode(get_bytes(&f, 5).unwrap()).unwrap();
        assert_eq!(get_int(&inner, 1), Some(u64::MAX));
        assert_eq!(get_bytes(&inner, 2), Some(&b"x"[..]));
        assert!(decode(&[0x0a, 0x05, 0x01]).is_none());
    }
}
