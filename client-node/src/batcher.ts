/**
 * Rows logged with `Run.log` become FloatBlocks (rows of series that share their steps), and
 * blocks become PointBatch bytes, encoded here directly from Float64Arrays: protobuf's packed
 * doubles are little-endian IEEE 754, the very bytes of a Float64Array on this machine. The
 * encoding is checked against @bufbuild/protobuf's in the tests.
 */
import { endianness } from "node:os";
import { invalidArgument } from "./errors.js";
import { checkName } from "./rules.js";

const LITTLE_ENDIAN = endianness() === "LE";

/** Points of one row go to one block while its series names stay the same. */
class Block {
  readonly names: string[];
  readonly namesBytes: Buffer;
  steps: number[] = [];
  times: number[] = [];
  values: Float64Array;
  rows = 0;

  constructor(names: string[], namesBytes: Buffer, capacityRows: number) {
    this.names = names;
    this.namesBytes = namesBytes;
    this.values = new Float64Array(Math.max(1, capacityRows) * names.length);
  }

  get lastStep(): number {
    return this.rows ? this.steps[this.rows - 1]! : -Infinity;
  }

  add(step: number, time: number, metrics: Record<string, number>): void {
    const width = this.names.length;
    if ((this.rows + 1) * width > this.values.length) {
      const grown = new Float64Array(this.values.length * 2);
      grown.set(this.values);
      this.values = grown;
    }
    let at = this.rows * width;
    for (const name of this.names) {
      const value = metrics[name];
      if (typeof value !== "number") {
        throw invalidArgument(`value of ${JSON.stringify(name)} must be a number, got ${typeof value}`);
      }
      this.values[at++] = value;
    }
    this.steps.push(step);
    this.times.push(time);
    this.rows++;
  }

  /** Encoded FloatBlock message (without its own tag and length). */
  encode(): Buffer[] {
    const n = this.rows * this.names.length;
    return [
      this.namesBytes,
      packed(0x12, Float64Array.from(this.steps)),
      packed(0x1a, this.values.subarray(0, n)),
      packed(0x22, Float64Array.from(this.times)),
    ];
  }
}

/** The encoded `names` fields of a block, cached per key set (a training loop repeats one). */
function encodeNames(names: string[]): Buffer {
  const parts: Buffer[] = [];
  for (const name of names) {
    const bytes = Buffer.from(name, "utf8");
    parts.push(Buffer.from([0x0a]), varint(bytes.length), bytes);
  }
  return Buffer.concat(parts);
}

export function varint(value: number): Buffer {
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return Buffer.from(out);
}

function packed(tag: number, values: Float64Array): Buffer {
  if (values.length === 0) return Buffer.alloc(0);
  const length = varint(values.length * 8);
  const out = Buffer.allocUnsafe(1 + length.length + values.length * 8);
  out[0] = tag;
  length.copy(out, 1);
  const start = 1 + length.length;
  if (LITTLE_ENDIAN) {
    Buffer.from(values.buffer, values.byteOffset, values.length * 8).copy(out, start);
  } else {
    for (let i = 0; i < values.length; i++) out.writeDoubleLE(values[i]!, start + i * 8);
  }
  return out;
}

function field(tag: number, parts: Buffer[]): Buffer[] {
  const size = parts.reduce((sum, p) => sum + p.length, 0);
  return [Buffer.from([tag]), varint(size), ...parts];
}

/** One sealed batch: its sequence number, its encoded AppendPointsRequest and its size. */
export interface EncodedBatch {
  sequence: number;
  bytes: Buffer;
  points: number;
}

/** Collects rows into blocks, and blocks into batches of at most `maxPoints` points. */
export class Batcher {
  private blocks: Block[] = [];
  private current: Block | undefined;
  private readonly namesCache = new Map<string, Buffer>();
  points = 0;

  constructor(private readonly maxPoints: number) {}

  /** Adds a row; returns false (adding nothing) when it would overflow the batch. */
  add(metrics: Record<string, number>, step: number, time: number): boolean {
    const names = Object.keys(metrics);
    if (names.length === 0) return true;
    if (names.length > this.maxPoints) {
      throw invalidArgument(`a row of ${names.length} series exceeds the batch limit of ${this.maxPoints} points`);
    }
    if (this.points + names.length > this.maxPoints) return false;
    let block = this.current;
    if (block === undefined || !sameNames(block.names, names) || !(step > block.lastStep)) {
      block = new Block(names, this.namesBytes(names), Math.ceil(this.maxPoints / names.length));
      this.blocks.push(block);
      this.current = block;
    }
    block.add(step, time, metrics);
    this.points += names.length;
    return true;
  }

  /** The batch so far as AppendPointsRequest bytes with `sequence`, and a fresh start. */
  seal(sequence: number): EncodedBatch {
    const body: Buffer[] = [Buffer.from([0x08]), varint(sequence)];
    for (const block of this.blocks) body.push(...field(0x22, block.encode()));
    const bytes = Buffer.concat(field(0x12, body));
    const sealed = { sequence, bytes, points: this.points };
    this.blocks = [];
    this.current = undefined;
    this.points = 0;
    return sealed;
  }

  private namesBytes(names: string[]): Buffer {
    const key = names.join("\0");
    let bytes = this.namesCache.get(key);
    if (bytes === undefined) {
      for (const name of names) {
        checkName(name, "series name");
      }
      bytes = encodeNames(names);
      if (this.namesCache.size > 1024) this.namesCache.clear();
      this.namesCache.set(key, bytes);
    }
    return bytes;
  }
}

function sameNames(a: string[], b: string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
