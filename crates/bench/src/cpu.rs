//! The CPU stand-in: plain memory copies and a matrix multiply on the host, measured by the same
//! loop as the GPU kernels. It exists so that the orchestration (tenant processes, start barrier,
//! timing, aggregation, reports) can be tested on machines without a GPU; its numbers say
//! nothing about any GPU.

use crate::error::BenchError;
use crate::protocol::DeviceInfo;
use crate::tenant::Kernel;
use crate::workload::{Shape, Workload};

/// The device a stand-in tenant reports.
pub fn probe() -> DeviceInfo {
    DeviceInfo {
        name: "CPU stand-in".into(),
        memory_mib: None,
        sm_count: std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as u32),
        compute_capability: None,
    }
}

/// The stand-in kernel for a workload.
pub fn make_kernel(workload: Workload, shape: Shape) -> Box<dyn Kernel> {
    let work = shape.work_per_iter(workload);
    match shape {
        Shape::Copy { bytes } => {
            let n = bytes as usize;
            let src: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            Box::new(CopyKernel {
                src,
                dst: vec![0; n],
                work,
            })
        }
        Shape::Gemm { m, n, k } => {
            let (m, n, k) = (m as usize, n as usize, k as usize);
            let a: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i % 13) as f32 - 6.0) / 6.0).collect();
            Box::new(GemmKernel {
                a,
                b,
                c: vec![0.0; m * n],
                m,
                n,
                k,
                work,
            })
        }
    }
}

struct CopyKernel {
    src: Vec<u8>,
    dst: Vec<u8>,
    work: f64,
}

impl Kernel for CopyKernel {
    fn work_per_iter(&self) -> f64 {
        self.work
    }

    fn run(&mut self, iters: u64) -> Result<(), BenchError> {
        for _ in 0..iters {
            self.dst.copy_from_slice(std::hint::black_box(&self.src));
            std::hint::black_box(&mut self.dst);
        }
        Ok(())
    }
}

struct GemmKernel {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    m: usize,
    n: usize,
    k: usize,
    work: f64,
}

impl Kernel for GemmKernel {
    fn work_per_iter(&self) -> f64 {
        self.work
    }

    fn run(&mut self, iters: u64) -> Result<(), BenchError> {
        let (m, n, k) = (self.m, self.n, self.k);
        for _ in 0..iters {
            // Row-major C = A·B in i-k-j order (unit stride in the inner loop).
            self.c.iter_mut().for_each(|x| *x = 0.0);
            for i in 0..m {
                let c_row = &mut self.c[i * n..(i + 1) * n];
                for p in 0..k {
                    let a = self.a[i * k + p];
                    let b_row = &self.b[p * n..(p + 1) * n];
                    for (c, b) in c_row.iter_mut().zip(b_row) {
                        *c += a * b;
                    }
                }
            }
            std::hint::black_box(&mut self.c);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_is_a_real_product() {
        let mut k = GemmKernel {
            a: vec![1.0, 2.0, 3.0, 4.0],
            b: vec![5.0, 6.0, 7.0, 8.0],
            c: vec![0.0; 4],
            m: 2,
            n: 2,
            k: 2,
            work: 16.0,
        };
        k.run(2).unwrap();
        assert_eq!(k.c, vec![19.0, 22.0, 43.0, 50.0]);
    }

    #[test]
    fn copy_copies() {
        let mut k = make_kernel(Workload::Dtod, Shape::Copy { bytes: 1000 });
        assert_eq!(k.work_per_iter(), 2000.0);
        k.run(1).unwrap();
    }
}
