"""Small helpers over `llvmlite.ir.IRBuilder`, so kernel code reads at the level of the math."""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
F32 = ir.FloatType()
# Float ops may be fused into FMAs and reassociated (reductions in any order); no assumption
# about NaN or infinities, so bad inputs still propagate.
FLAGS = ("contract", "reassoc")


class Emitter:
    """An IRBuilder plus the vector width every helper works at."""

    def __init__(self, builder: ir.IRBuilder, lanes: int) -> None:
        self.b = builder
        self.lanes = lanes
        self.vf = ir.VectorType(F32, lanes)
        self.vi = ir.VectorType(I32, lanes)

    @staticmethod
    def i64(value: int) -> ir.Constant:
        return ir.Constant(I64, value)

    def zeros(self) -> ir.Constant:
        return ir.Constant(self.vf, [0.0] * self.lanes)

    def splat(self, scalar: ir.Value, lanes: int | None = None) -> ir.Value:
        lanes = lanes or self.lanes
        undef = ir.Constant(ir.VectorType(scalar.type, lanes), ir.Undefined)
        one = self.b.insert_element(undef, scalar, ir.Constant(I32, 0))
        zeros = ir.Constant(ir.VectorType(I32, lanes), [0] * lanes)
        return self.b.shuffle_vector(one, undef, zeros)

    def load_vector(
        self, base: ir.Value, offset: ir.Value, element: ir.Type, lanes: int | None = None
    ) -> ir.Value:
        """`lanes` elements from base[offset], any alignment."""
        vector = ir.VectorType(element, lanes or self.lanes)
        pointer = self.b.bitcast(self.b.gep(base, [offset]), vector.as_pointer())
        return self.b.load(pointer, align=4 if element == F32 else 1)

    def prefetch(self, pointer: ir.Value, locality: int = 3) -> None:
        """Hint that the cache line at `pointer` will be read soon (never faults). Locality 3
        fetches into L1 (x86 prefetcht0), 2 into L2 (t1), 1 into L3 (t2), 0 non-temporal."""
        module = self.b.module
        fn = module.globals.get("llvm.prefetch.p0") or ir.Function(
            module,
            ir.FunctionType(ir.VoidType(), [I8.as_pointer(), I32, I32, I32]),
            "llvm.prefetch.p0",
        )
        pointer = self.b.bitcast(pointer, I8.as_pointer())
        flags = [ir.Constant(I32, 0), ir.Constant(I32, locality), ir.Constant(I32, 1)]
        self.b.call(fn, [pointer, *flags])

    def load_scalar(self, base: ir.Value, offset: ir.Value) -> ir.Value:
        return self.b.load(self.b.gep(base, [offset]))

    def madd(self, a: ir.Value, b: ir.Value, c: ir.Value | None) -> ir.Value:
        """a * b + c, fused where the CPU has FMA; c None means a plain product."""
        product = self.b.fmul(a, b, flags=FLAGS)
        return product if c is None else self.b.fadd(product, c, flags=FLAGS)

    def hsum(self, vector: ir.Value) -> ir.Value:
        """Sum of the lanes, halving the width each step (log2(lanes) shuffles and adds)."""
        width = vector.type.count
        while width > 1:
            width //= 2
            mask = ir.VectorType(I32, width)
            halves = [
                self.b.shuffle_vector(vector, vector, ir.Constant(mask, list(h)))
                for h in (range(width), range(width, 2 * width))
            ]
            vector = self.b.fadd(*halves, flags=FLAGS)
        return self.b.extract_element(vector, ir.Constant(I32, 0))

    def variable(self, start: ir.Value) -> ir.Value:
        """A stack slot holding `start`; allocated in the entry block so loops do not grow the
        stack, and promoted to a register by LLVM's mem2reg."""
        with self.b.goto_entry_block():
            slot = self.b.alloca(start.type)
        self.b.store(start, slot)
        return slot

    def while_loop(self, condition: Callable[[], ir.Value], body: Callable[[], None]) -> None:
        """`while condition(): body()`, both emitting IR at the builder's position."""
        head = self.b.append_basic_block("while.head")
        loop = self.b.append_basic_block("while.body")
        done = self.b.append_basic_block("while.done")
        self.b.branch(head)
        self.b.position_at_end(head)
        self.b.cbranch(condition(), loop, done)
        self.b.position_at_end(loop)
        body()
        self.b.branch(head)
        self.b.position_at_end(done)

    def count_loop(
        self, start: ir.Value, stop: ir.Value, step: int, body: Callable[[ir.Value], None]
    ) -> ir.Value:
        """`for i in range(start, stop - step + 1, step): body(i)`; returns the slot of i, which
        holds the first index not visited (where a scalar tail loop starts)."""
        index = self.variable(start)

        def run() -> None:
            i = self.b.load(index)
            body(i)
            self.b.store(self.b.add(i, self.i64(step)), index)

        self.while_loop(
            lambda: self.b.icmp_signed("<=", self.b.add(self.b.load(index), self.i64(step)), stop),
            run,
        )
        return index
