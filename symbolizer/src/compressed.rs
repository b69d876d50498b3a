//! Compressed DWARF sections (`SHF_COMPRESSED`, as distributions ship
//! debug files) read a piece at a time: a compilation unit, its
//! abbreviation table, its line program. Each piece costs inflating the
//! section up to it (from where the last piece ended when it lies further
//! on), and only its own bytes are kept. A piece that lies before where
//! the last one ended starts the stream again; past [`STREAM_RESTARTS`]
//! such restarts the section is inflated whole once and kept: an object
//! that lookups keep coming back to pays its size once instead.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::dwarf::{self, Reader, SectionBytes};
use crate::elf::{Backing, ElfObject};
use crate::Error;

/// Times the stream of one section starts again from its beginning (for a
/// piece before where the last ended) before the section is inflated
/// whole. Pieces further on only cost the inflating between them: lookups
/// come in address order, and units mostly lie in address order, so a
/// restart is a later batch of lookups (the next interval, the in-process
/// reader's next pass) going back; libc's debug file inflates to 6 MB of
/// `.debug_info`, kept only for an object asked about again and again.
const STREAM_RESTARTS: usize = 3;

/// The buffer between an inflating stream and its readers.
const STREAM_BUFFER: usize = 32 << 10;

/// One compressed section of an object's file.
pub(crate) struct Compressed {
    backing: Arc<Backing>,
    /// The compressed stream, in `backing`.
    start: usize,
    end: usize,
    format: object::CompressionFormat,
    /// Inflated size, as declared (and checked against the caps).
    size: u64,
    pub(crate) endian: gimli::RunTimeEndian,
    /// Times the stream started again from the beginning.
    restarts: AtomicUsize,
    /// The whole section, inflated once past [`STREAM_RESTARTS`].
    whole: OnceLock<Option<Reader>>,
    /// The stream where the last piece read alone ended: a piece further
    /// on is inflated from there, not from the start (lookups go through
    /// addresses in order, and units mostly lie in address order).
    resume: Mutex<Option<Resume>>,
}

/// An inflating stream of a section and its position in the section.
struct Resume {
    at: usize,
    stream: Box<dyn Read + Send>,
}

/// The compressed bytes of a section, read from the file they are in.
struct CompressedBytes {
    backing: Arc<Backing>,
    at: usize,
    end: usize,
    /// Where the pages read were last given back.
    given: usize,
}

/// Compressed bytes read between two give-backs of their pages: the
/// decoder has copied them, and a stream started again reads them again
/// from the page cache (libc's compressed `.debug_info` is 2.3 MB).
const GIVE_BACK_EVERY: usize = 256 << 10;

impl Read for CompressedBytes {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = self.backing.get(self.at..self.end).unwrap_or(&[]);
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        if self.at - self.given >= GIVE_BACK_EVERY || self.at == self.end {
            self.backing.give_back(self.given..self.at);
            self.given = self.at;
        }
        Ok(n)
    }
}

/// A reader that counts the bytes read through it.
struct Counted<'a> {
    inner: &'a mut (dyn Read + Send),
    n: usize,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n;
        Ok(n)
    }
}

/// A piece of a section, ready for `gimli`.
pub(crate) enum Piece {
    /// The piece's bytes alone.
    Alone(Vec<u8>),
    /// The whole section (inflated and kept): the piece lies at its offset.
    Whole(Reader),
}

impl Compressed {
    /// Section `name` of `obj` (parsed as `file`) when it is compressed
    /// with zlib or zstd. A declared size over the caps is refused before
    /// anything is allocated for it.
    pub(crate) fn of(
        obj: &ElfObject,
        file: &object::File<'_>,
        name: &str,
    ) -> Result<Option<Compressed>, Error> {
        use object::{Object, ObjectSection};
        let backing = obj.data();
        let Some(section) = file.section_by_name(name) else {
            return Ok(None);
        };
        let Ok(c) = section.compressed_data() else {
            return Ok(None);
        };
        if !matches!(
            c.format,
            object::CompressionFormat::Zlib | object::CompressionFormat::Zstandard
        ) {
            return Ok(None);
        }
        let cap = dwarf::MAX_DECOMPRESSED_BYTES
            .min((c.data.len() as u64).saturating_mul(dwarf::MAX_RATIO));
        if c.uncompressed_size > cap {
            return Err(Error::Decompression {
                path: obj.path.clone(),
                section: name.to_owned(),
                size: c.uncompressed_size,
                cap,
            });
        }
        let start = (c.data.as_ptr() as usize).wrapping_sub(backing.as_ptr() as usize);
        let Some(end) = start
            .checked_add(c.data.len())
            .filter(|&e| e <= backing.len())
        else {
            return Ok(None);
        };
        let endian = if obj.little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        Ok(Some(Compressed {
            backing: Arc::clone(backing),
            start,
            end,
            format: c.format,
            size: c.uncompressed_size,
            endian,
            restarts: AtomicUsize::new(0),
            whole: OnceLock::new(),
            resume: Mutex::new(None),
        }))
    }

    /// The inflated section as a stream, at most its declared size,
    /// buffered: abbreviation tables are read from it a byte at a time.
    pub(crate) fn stream(&self) -> std::io::Result<Box<dyn Read + Send>> {
        let data = CompressedBytes {
            backing: Arc::clone(&self.backing),
            at: self.start,
            end: self.end,
            given: self.start,
        };
        let inflated: Box<dyn Read + Send> = match self.format {
            object::CompressionFormat::Zstandard => Box::new(
                ruzstd::decoding::StreamingDecoder::new(data)
                    .map_err(|e| std::io::Error::other(e.to_string()))?
                    .take(self.size),
            ),
            _ => Box::new(flate2::read::ZlibDecoder::new(data).take(self.size)),
        };
        Ok(Box::new(std::io::BufReader::with_capacity(
            STREAM_BUFFER,
            inflated,
        )))
    }

    /// The piece at `offset` that `read` reads from the inflated stream:
    /// alone, or within the whole section (see [`STREAM_RESTARTS`]).
    pub(crate) fn piece(
        &self,
        offset: usize,
        read: impl FnOnce(&mut dyn Read) -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<Piece> {
        if self.whole.get().is_none() {
            let mut resume = self.resume.lock().unwrap_or_else(|p| p.into_inner());
            let restart = resume.as_ref().is_some_and(|r| r.at > offset);
            if !restart || self.restarts.fetch_add(1, Ordering::Relaxed) < STREAM_RESTARTS {
                return alone(&mut resume, offset, read, || self.stream()).map(Piece::Alone);
            }
            // The stream is not needed any more: the whole section replaces it.
            *resume = None;
        }
        match self.whole() {
            Some(whole) => Ok(Piece::Whole(whole.clone())),
            None => Err(std::io::Error::other("the section does not inflate")),
        }
    }

    /// The whole section, inflated once and kept.
    pub(crate) fn whole(&self) -> Option<&Reader> {
        self.whole
            .get_or_init(|| {
                // The declared size is within the caps (`Compressed::of`).
                let mut bytes = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
                self.stream().ok()?.read_to_end(&mut bytes).ok()?;
                Some(self.reader(bytes))
            })
            .as_ref()
    }

    /// Bytes of the whole section when it was inflated and kept.
    pub(crate) fn whole_bytes(&self) -> usize {
        self.whole
            .get()
            .and_then(Option::as_ref)
            .map_or(0, gimli::Reader::len)
    }

    /// `bytes` as a section reader.
    pub(crate) fn reader(&self, bytes: Vec<u8>) -> Reader {
        Reader::new(SectionBytes::Owned(dwarf::owned_bytes(bytes)), self.endian)
    }
}

/// What `read` reads at `offset` of a section inflated alone: from where
/// the last piece ended (`resume`) when it lies further on, else from the
/// start of a new `stream`.
fn alone(
    resume: &mut Option<Resume>,
    offset: usize,
    read: impl FnOnce(&mut dyn Read) -> std::io::Result<Vec<u8>>,
    stream: impl FnOnce() -> std::io::Result<Box<dyn Read + Send>>,
) -> std::io::Result<Vec<u8>> {
    let mut r = match resume.take() {
        Some(r) if r.at <= offset => r,
        _ => Resume {
            at: 0,
            stream: stream()?,
        },
    };
    let skip = (offset - r.at) as u64;
    let skipped = std::io::copy(&mut (&mut r.stream).take(skip), &mut std::io::sink())?;
    if skipped != skip {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut counted = Counted {
        inner: &mut *r.stream,
        n: 0,
    };
    let bytes = read(&mut counted)?;
    r.at = offset + counted.n;
    *resume = Some(r);
    Ok(bytes)
}

/// Reads one piece that starts with a DWARF initial length (a unit of
/// `.debug_info`, a line program): its length and, if `keep`, its bytes
/// (the length field included); `None` at the end of the section.
pub(crate) fn next_unit(
    r: &mut dyn Read,
    endian: gimli::RunTimeEndian,
    keep: bool,
) -> std::io::Result<Option<(usize, Vec<u8>)>> {
    let mut unit = vec![0u8; 4];
    match r.read_exact(&mut unit) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let word = |b: &[u8]| match endian {
        gimli::RunTimeEndian::Little => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        gimli::RunTimeEndian::Big => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
    };
    let len = match word(&unit) {
        0xffff_ffff => {
            unit.resize(12, 0);
            r.read_exact(&mut unit[4..])?;
            let (a, b) = (u64::from(word(&unit[4..8])), u64::from(word(&unit[8..12])));
            match endian {
                gimli::RunTimeEndian::Little => a | b << 32,
                gimli::RunTimeEndian::Big => b | a << 32,
            }
        }
        len => u64::from(len),
    };
    let head = unit.len() as u64;
    let mut body = r.take(len);
    if keep {
        // Grows with what the stream gives, never with what the header claims.
        body.read_to_end(&mut unit)?;
    } else {
        std::io::copy(&mut body, &mut std::io::sink())?;
    }
    if body.limit() != 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let total = head
        .checked_add(len)
        .and_then(|t| usize::try_from(t).ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    Ok(Some((total, unit)))
}

/// Reads one piece that starts with a DWARF initial length and returns its
/// bytes ([`next_unit`]); the stream's end before it is an error.
pub(crate) fn initial_length_piece(
    r: &mut dyn Read,
    endian: gimli::RunTimeEndian,
) -> std::io::Result<Vec<u8>> {
    next_unit(r, endian, true)?
        .map(|(_, bytes)| bytes)
        .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
}

/// Reads one abbreviation table (declarations up to the null code) and
/// returns its bytes; the stream's end before it is an error.
pub(crate) fn abbreviation_table(r: &mut dyn Read) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    loop {
        if uleb(r, &mut bytes)? == 0 {
            return Ok(bytes);
        }
        uleb(r, &mut bytes)?; // tag
        byte(r, &mut bytes)?; // children
        loop {
            let name = uleb(r, &mut bytes)?;
            let form = uleb(r, &mut bytes)?;
            if form == u64::from(gimli::constants::DW_FORM_implicit_const.0) {
                uleb(r, &mut bytes)?; // the constant (signed: same bytes)
            }
            if name == 0 && form == 0 {
                break;
            }
        }
    }
}

fn byte(r: &mut dyn Read, out: &mut Vec<u8>) -> std::io::Result<u8> {
    let mut b = [0u8];
    r.read_exact(&mut b)?;
    out.push(b[0]);
    Ok(b[0])
}

/// A LEB128 number's value (saturated past 64 bits), its bytes appended
/// to `out`.
fn uleb(r: &mut dyn Read, out: &mut Vec<u8>) -> std::io::Result<u64> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let b = byte(r, out)?;
        if shift < 64 {
            value |= u64::from(b & 0x7f) << shift;
        }
        shift = shift.saturating_add(7);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// A section reader that holds `piece` at `offset` of an otherwise zero
/// section, in an anonymous mapping whose other pages are never touched;
/// offsets into the section stay right.
pub(crate) fn sparse(offset: usize, piece: &[u8], endian: gimli::RunTimeEndian) -> Option<Reader> {
    let end = offset.checked_add(piece.len())?;
    let mut bytes = memmap2::MmapMut::map_anon(end.max(1)).ok()?;
    bytes[offset..end].copy_from_slice(piece);
    Some(Reader::new(
        SectionBytes::Anonymous(Arc::new(bytes.make_read_only().ok()?)),
        endian,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abbreviation_table_ends_at_its_null_code() {
        // Code 1: DW_TAG_compile_unit, children, DW_AT_name/DW_FORM_strp,
        // DW_AT_language/DW_FORM_implicit_const 12; code 200 (two LEB128
        // bytes): DW_TAG_subprogram, no children, nothing; the null code;
        // then the next table.
        let table = [
            1, 0x11, 1, 0x03, 0x0e, 0x13, 0x21, 12, 0, 0, 0xc8, 0x01, 0x2e, 0, 0, 0, 0,
        ];
        let mut input = table.to_vec();
        input.extend_from_slice(&[7, 7, 7]);
        let mut r: &[u8] = &input;
        assert_eq!(abbreviation_table(&mut r).unwrap(), table);
        assert_eq!(r, &[7, 7, 7]);
        // Cut short: an error, not a partial table.
        let mut short: &[u8] = &table[..table.len() - 1];
        assert!(abbreviation_table(&mut short).is_err());
    }

    /// A section of 64 KiB compressed with zlib, in owned bytes.
    fn zlib_section() -> (Compressed, Vec<u8>) {
        use std::io::Write;
        let plain: Vec<u8> = (0..64u32 << 10).map(|i| (i % 251) as u8).collect();
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&plain).unwrap();
        let bytes = enc.finish().unwrap();
        let end = bytes.len();
        let section = Compressed {
            backing: Arc::new(Backing::Owned(bytes)),
            start: 0,
            end,
            format: object::CompressionFormat::Zlib,
            size: plain.len() as u64,
            endian: gimli::RunTimeEndian::Little,
            restarts: AtomicUsize::new(0),
            whole: OnceLock::new(),
            resume: Mutex::new(None),
        };
        (section, plain)
    }

    /// Reads 16 bytes at `offset`: whether from the piece alone or from
    /// the whole section, and the bytes.
    fn sixteen_at(section: &Compressed, offset: usize) -> (bool, Vec<u8>) {
        let read = |r: &mut dyn Read| {
            let mut b = vec![0u8; 16];
            r.read_exact(&mut b)?;
            Ok(b)
        };
        match section.piece(offset, read).unwrap() {
            Piece::Alone(b) => (true, b),
            Piece::Whole(whole) => {
                use gimli::Reader as _;
                let mut at = whole.clone();
                at.skip(offset).unwrap();
                (false, at.split(16).unwrap().to_slice().unwrap().to_vec())
            }
        }
    }

    #[test]
    fn pieces_further_on_stream_and_going_back_inflates_whole_at_last() {
        let (section, plain) = zlib_section();
        // Forward, however many: the stream goes on, nothing is kept.
        for offset in (0..60_000).step_by(1_000) {
            assert_eq!(
                sixteen_at(&section, offset),
                (true, plain[offset..offset + 16].to_vec())
            );
        }
        assert_eq!(section.whole_bytes(), 0);
        // Going back starts the stream again, STREAM_RESTARTS times.
        for round in 0..STREAM_RESTARTS {
            let offset = 100 + round;
            assert_eq!(
                sixteen_at(&section, offset),
                (true, plain[offset..offset + 16].to_vec())
            );
            assert_eq!(
                sixteen_at(&section, 50_000),
                (true, plain[50_000..50_016].to_vec())
            );
        }
        // Once more: the section is inflated whole and kept.
        assert_eq!(sixteen_at(&section, 7), (false, plain[7..23].to_vec()));
        assert_eq!(section.whole_bytes(), plain.len());
        assert_eq!(
            sixteen_at(&section, 60_000),
            (false, plain[60_000..60_016].to_vec())
        );
    }

    #[test]
    fn a_sparse_section_keeps_offsets() {
        let r = sparse(10_000, b"abc", gimli::RunTimeEndian::Little).unwrap();
        use gimli::Reader as _;
        assert_eq!(r.len(), 10_003);
        let mut at = r.clone();
        at.skip(10_000).unwrap();
        assert_eq!(at.to_slice().unwrap().as_ref(), b"abc");
    }
}
