//! Big buffers across the Rust/Python line with as few copies as the types allow.
//!
//! An apply request's buffers (pickled function and arguments, numpy data) arrive as frames the
//! runtime owns. The big ones are handed to ipyparallel's deserializer as read-only `memoryview`s
//! over those very frames (a [`Frame`] object keeps each one alive as long as Python holds a view or an
//! array made from it), not copied into `bytes`: a Python ipengine gives it memoryviews too
//! (pyzmq frames), so the serializer's behaviour is the same, and a 1 MB argument costs no copy
//! here. The reply's buffers (whatever `serialize_object` returns: bytes, memoryviews over
//! arrays) are copied once, straight from their buffer into the frame that is sent.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyMemoryView};
use std::ffi::{c_int, c_void};

/// One received frame, lent to Python through the buffer protocol (read-only).
#[pyclass(frozen)]
pub struct Frame {
    data: Vec<u8>,
}

#[pymethods]
impl Frame {
    /// The buffer protocol: a read-only view of the frame (a writable request is refused).
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let data = &slf.get().data;
        let len = ffi::Py_ssize_t::try_from(data.len())
            .map_err(|_| PyBufferError::new_err("frame too large"))?;
        // SAFETY: `view` is the caller's Py_buffer to fill; the pointer stays valid while the
        // view exists because PyBuffer_FillInfo takes a reference to `slf` (view.obj), and a
        // frozen Frame's Vec never moves or changes. readonly = 1.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr().cast_mut().cast::<c_void>(),
                len,
                1,
                flags,
            )
        };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}

/// Frames from this size on are lent as views; smaller ones are copied into `bytes`, which
/// costs less than the two objects a view takes.
pub const LEND_FROM: usize = 64 << 10;

/// The frames as a list of read-only memoryviews (big ones, not copied) and bytes (small ones).
pub fn views(py: Python<'_>, frames: Vec<Vec<u8>>) -> PyResult<Bound<'_, PyList>> {
    let mut items: Vec<Bound<'_, PyAny>> = Vec::with_capacity(frames.len());
    for data in frames {
        if data.len() < LEND_FROM {
            items.push(PyBytes::new(py, &data).into_any());
        } else {
            let frame = Bound::new(py, Frame { data })?;
            items.push(PyMemoryView::from(frame.as_any())?.into_any());
        }
    }
    PyList::new(py, items)
}

/// Each object's bytes (anything with the buffer protocol: bytes, memoryviews of arrays of any
/// item type and layout), copied once into a frame (twice for a non-contiguous view, which is
/// first made contiguous).
pub fn frames(py: Python<'_>, objects: &Bound<'_, PyList>) -> PyResult<Vec<Vec<u8>>> {
    objects.iter().map(|o| frame(py, &o)).collect()
}

fn frame(py: Python<'_>, o: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(buf) = PyBuffer::<u8>::get(o) {
        return buf.to_vec(py);
    }
    // another item type ('d', 'i', ...): the same memory as bytes, when C-contiguous
    let view = PyMemoryView::from(o)?;
    let bytes = match view.call_method1("cast", ("B",)) {
        Ok(flat) => flat,
        Err(_) => view.call_method0("tobytes")?,
    };
    PyBuffer::<u8>::get(&bytes)?.to_vec(py)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::types::PyDict;

    #[test]
    fn views_share_the_frames_and_replies_copy_any_buffer() {
        pyo3::prepare_freethreaded_python();
        Python::with_gil(|py| {
            let list = views(py, vec![b"abc".to_vec(), vec![7u8; 1 << 20]]).unwrap();
            let g = PyDict::new(py);
            g.set_item("bufs", &list).unwrap();
            let check = c"
assert bufs[0] == b'abc' and len(bufs[1]) == 1 << 20
v = bufs[1]
assert isinstance(v, memoryview) and v.readonly
try:
    v[0] = 1
except TypeError:
    pass
else:
    raise AssertionError('a frame view must be read-only')
big = memoryview(bufs[1])
del bufs
assert big[12345] == 7  # the view keeps its frame alive
import array
out = [b'xy', memoryview(bytearray(b'zz')), memoryview(b'abcdef')[1:3],
       memoryview(array.array('h', [1, 2])), memoryview(b'abcdef')[::2]]
";
            py.run(check, Some(&g), None).unwrap();
            let out = g.get_item("out").unwrap().unwrap();
            let got = frames(py, out.downcast::<PyList>().unwrap()).unwrap();
            let shorts: Vec<u8> = [1i16, 2].iter().flat_map(|v| v.to_ne_bytes()).collect();
            assert_eq!(
                got,
                vec![
                    b"xy".to_vec(),
                    b"zz".to_vec(),
                    b"bc".to_vec(),
                    shorts,
                    b"ace".to_vec()
                ]
            );
        });
    }
}
