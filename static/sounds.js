// Campfire's 56 /play sounds, synthesized with the Web Audio API: no audio files.
// A recipe writes notes into a Score (plain data); the Score is then scheduled on
// a live AudioContext (playSound) or an OfflineAudioContext (renderSound).

const MASTER_GAIN = 0.7
const START_DELAY_S = 0.03      // scheduling headroom on a live context
const RESUME_TIMEOUT_MS = 300   // a context not running by then stays silent
const TAIL_S = 0.1
const ECHO_TAIL_S = 0.8
const MAX_LENGTH_S = 4.5
const NOISE_LENGTH_S = 1
const MUTED_KEY = "campfire:muted"
const COMPRESSOR = { threshold: -14, knee: 8, ratio: 8, attack: 0.002, release: 0.2 }

const SEMITONES = { C: 0, D: 2, E: 4, F: 5, G: 7, A: 9, B: 11 }
const VOWELS = { a: [730, 1090, 2440], e: [530, 1840, 2480], i: [270, 2290, 3010], o: [570, 840, 2410], u: [300, 870, 2240] }
const FORMANT_GAINS = [3, 2, 1]
const BELL_PARTIALS = [1, 2, 2.4, 3, 4.2, 5.4]
// Each drum is a list of percussive layers: [duration s, Hz (or a glide), options].
const DRUMS = {
  k: [[0.3, [150, 45], { w: "sine", g: 1 }]],
  s: [[0.2, 0, { w: "noise", bp: 1800, q: 0.7, g: 0.7 }], [0.1, [220, 150], { g: 0.4 }]],
  h: [[0.06, 0, { w: "noise", hp: 7000, g: 0.3 }]],
  c: [[1.6, 0, { w: "noise", hp: 4500, g: 0.45 }]],
  t: [[0.35, [200, 120], { w: "sine", g: 0.8 }]],
  l: [[0.4, [120, 65], { w: "sine", g: 0.9 }]],
  x: [[0.15, 0, { w: "noise", bp: 1300, q: 1.5, g: 0.8 }]],
}

// "Bb3" → Hz; numbers and numeric strings pass through.
const hz = (n) => typeof n === "number" ? n : isNaN(n) ? 440 * 2 ** ((SEMITONES[n[0]] + (n[1] === "#") - (n[1] === "b") + 12 * n.at(-1) - 57) / 12) : +n
const hzList = (f) => [].concat(f).map(hz)

function random(seed) { // mulberry32, so every render of a sound is identical
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32
  }
}

// Event options: w wave or "noise", g peak gain, a attack s, r release s, p percussive (fades
// to -60 dB by the end), lp/bp/hp filter Hz, q its Q, v vowels (formants; "ua" morphs),
// uni detunes in cents, vib [Hz, cents, delay s], trem [Hz, depth (0.5 = full)].
// A frequency given as a list glides through its points over the event.
class Score {
  events = []
  end = 0
  echo = null  // [delay s, feedback]

  constructor(seed) { this.rand = random(seed) }

  get length() { return Math.min(this.end + (this.echo ? ECHO_TAIL_S : TAIL_S), MAX_LENGTH_S) }

  tone(t, d, f, o = {}) {
    this.events.push({ t, d, f: hzList(f), w: "triangle", g: 0.3, a: 0.01, r: 0.05, off: this.rand() * 0.9, ...o })
    this.end = Math.max(this.end, t + d)
    return this
  }

  noise(t, d, o) { return this.tone(t, d, 1, { w: "noise", ...o }) }

  chord(t, d, notes, o = {}) { // o.strum: seconds between the notes
    (typeof notes === "string" ? notes.split("+") : notes).forEach((n, i) => this.tone(t + i * (o.strum ?? 0), d, n, o))
    return this
  }

  // "C5 E5:2 r C4+E4+G4:4" — note or chord, then beats; returns the end time.
  mel(t, beat, text, o = {}) {
    for (const token of text.trim().split(/\s+/)) {
      const [n, beats = 1] = token.split(":")
      if (n !== "r") this.chord(t, beats * beat * (o.gate ?? 0.9), n, o)
      t += beats * beat
    }
    return t
  }

  // "syllable:seconds:pitch>glide …" — a sawtooth through vowel formants, with a
  // click or hiss for its consonants; "-:0.2" is a pause. Returns the end time.
  say(t, text, o = {}) {
    for (const token of text.split(" ")) {
      const [syllable, d, pitch] = token.split(":")
      const [, cons, vowels] = /^([^aeiou]*)([aeiou]*)/.exec(syllable)
      if (vowels) {
        if (/[sfhz]/.test(cons)) this.noise(t, 0.07, { hp: 3500, g: 0.12 })
        if (/[ptkdgbc]/.test(cons)) this.noise(t, 0.03, { bp: 1800, g: 0.25 })
        this.tone(t + 0.02, +d, pitch.split(">"), { w: "sawtooth", v: vowels, a: 0.03, r: 0.06, g: 0.5, ...o })
      }
      t += +d
    }
    return t
  }

  hit(drum, t, g = 1) {
    for (const [d, f, o] of DRUMS[drum]) this.tone(t, d, f, { ...o, p: 1, g: o.g * g })
    return this
  }

  beat(t, step, pattern, g) {
    for (const drum of pattern) (DRUMS[drum] && this.hit(drum, t, g), t += step)
    return t
  }

  bell(t, f, g = 0.3, d = 2) {
    BELL_PARTIALS.forEach((ratio, i) => this.tone(t, d / (1 + i / 2), hz(f) * ratio, { w: "sine", g: g / (i + 1), a: 0.002, p: 1 }))
    return this
  }

  claps(t, d, n, g = 0.4) {
    for (let i = 0; i < n; i++) {
      const x = this.rand()
      this.noise(t + x * d, 0.08, { bp: 900 + 1500 * this.rand(), q: 1.5, a: 0.002, p: 1, g: g * Math.sin(Math.PI * x) })
    }
    return this
  }
}

const BRASS = { w: "sawtooth", uni: [-8, 8], lp: 1800, g: 0.22, a: 0.03 }

const RECIPES = {
  "56k": (s) => {
    [[697, 1209], [770, 1336], [852, 1477], [941, 1336], [770, 1209]].forEach((pair, i) => s.chord(i * 0.11, 0.08, pair, { w: "sine", g: 0.2 }))
    s.tone(0.65, 0.55, 2100, { w: "sine", g: 0.25 })
    for (let i = 0; i < 10; i++) s.tone(1.25 + i * 0.05, 0.05, i % 2 ? 1180 : 980, { w: "square", g: 0.1 })
    s.noise(1.8, 1.4, { bp: [1200, 2600, 1800], q: 1.2, g: 0.5, trem: [37, 0.3] })
    s.tone(1.8, 1.4, [1650, 1850, 1700], { w: "square", g: 0.06, trem: [90, 0.5] })
  },
  ballmer: (s) => {
    for (let i = 0, f = 200; i < 3; i++, f += 30) s.say(i * 0.85, `de:.12:${f} ve:.12:${f + 15} lo:.14:${f + 40} pers:.3:${f + 30}>${f - 20}`, { g: 0.7 })
    s.claps(0.2, 2.6, 50, 0.25)
  },
  bell: (s) => s.bell(0, 660, 0.45, 3).bell(0.9, 660, 0.3, 2.2),
  bezos: (s) => s.say(0, [340, 325, 310, 295, 280, 265].map((f) => `ha:.12:${f} -:.06`).join(" ") + " haa:.45:250>170", { vib: [7, 30] }),
  bueller: (s) => {
    s.echo = [0.21, 0.3]
    s.say(0, "bu:.16:104 e:.12:104 ler:.35:100>97 -:.87 bu:.16:102 e:.12:102 ler:.4:97>95", { g: 0.6 })
  },
  butts: (s) => s.say(0, "he:.08:190 -:.08 he:.08:185 -:.3 hu:.1:95 -:.07 hu:.1:92 -:.07 hu:.12:88 -:.3 he:.08:190 -:.08 he:.1:180", { g: 0.6 }),
  clowntown: (s) => {
    const t = s.mel(0, 0.11, "E5 D#5 E5 C5 B4 C5 A4 G#4 A4 F4 E4 F4 D4 E4 F4 G4 A4:2", { w: "square", g: 0.12, lp: 2500 })
    s.mel(0, 0.22, "C3 G3+C4 G2 G3+B3 F2 F3+A3 G2 G3+B3 C3:2", { g: 0.3, p: 1 })
    s.tone(t, 0.22, [380, 420], { w: "sawtooth", v: "a", g: 0.5 }).tone(t + 0.3, 0.3, [380, 440], { w: "sawtooth", v: "a", g: 0.5 })
  },
  cottoneyejoe: (s) => {
    s.mel(0, 0.11, "D5 F#5 A5 F#5 G5 E5 C#5 E5 D5 F#5 A5 B5 A5:2 F#5 E5 D5:4", { w: "sawtooth", g: 0.25, bp: 1800, q: 0.8, vib: [6, 15] })
    s.beat(0, 0.22, "kxkxkxkxk")
  },
  crickets: (s) => {
    for (let i = 0; i < 7; i++) s.tone(i * 0.42 + s.rand() * 0.08, 0.16, 4500, { w: "sine", g: 0.3, trem: [45, 0.5] })
    for (let i = 0; i < 5; i++) s.tone(0.2 + i * 0.55, 0.12, 4250, { w: "sine", g: 0.15, trem: [50, 0.5] })
  },
  curb: (s) => {
    s.mel(0, 0.16, "C3 r G2 r C3 r G2 r F2 r C3 r G2 r C3", { w: "sawtooth", g: 0.35, lp: 500, p: 1 })
    s.mel(0, 0.16, "r G4 E4 G4 r E4 C4 D4 E4 F4 r A4 G4 F4 E4 C4", { g: 0.3, p: 1 })
  },
  dadgummit: (s) => {
    const t = s.say(0, "da:.2:210>230 gu:.16:260 mi:.3:320>220", { g: 0.7 })
    for (let i = 0; i < 14; i++) s.noise(t + i * 0.035, 0.02, { bp: 3000, q: 4, g: 0.3 })
    s.tone(t + 0.55, 0.15, [900, 250], { w: "sine", g: 0.4 }).noise(t + 0.55, 0.4, { lp: [2500, 400], g: 0.3, p: 1 })
  },
  dangerzone: (s) => {
    const saw = { w: "sawtooth", uni: [-9, 0, 9] }
    s.mel(0, 0.14, "A2 A2 A2 A2 A2 A2 G2 G2 F2 F2 F2 F2 G2 G2 E2 G2", { ...saw, lp: 700, g: 0.3, p: 1 })
    s.mel(0, 0.14, "A4:2 E5:2 D5 C5 B4 C5:2 A4:2 G4 A4 B4 C5 E5", { ...saw, lp: 2800, g: 0.2, vib: [5, 10, 0.1] })
    s.beat(0, 0.28, "ksksksks")
  },
  danielsan: (s) => {
    for (let t = 0; t < 1.6; t += 0.55) {
      s.tone(t, 0.5, [700, 2600], { w: "sine", g: 0.12 }).noise(t + 0.5, 0.7, { lp: 900, g: 0.8, p: 1 })
      for (let j = 0; j < 12; j++) s.noise(t + 0.6 + s.rand() * 0.6, 0.02, { hp: 5000, g: 0.3 })
    }
    s.chord(1.9, 1.4, "C4+G4+C5+E5", { ...BRASS, g: 0.15, r: 0.5 })
  },
  deeper: (s) => s.mel(0, 1.6, "C2+G2+C3+Eb3 Bb1+F2+Bb2+Db3", { w: "sawtooth", uni: [-12, 0, 12], g: 0.3, a: 0.08, r: 0.4, lp: [150, 1400, 300], gate: 0.94 }),
  donotwant: (s) => s.say(0, "du:.22:220 no:.22:230 wa:1:260>250>120", { g: 0.7, vib: [5, 40, 0.4] }),
  drama: (s) => {
    s.chord(0, 0.3, "D3+A3+D4", BRASS).chord(0.45, 0.3, "F3+C4+F4", BRASS).chord(0.95, 1.8, "C#3+G#3+C#4", { ...BRASS, trem: [8, 0.25], r: 0.6 })
    s.beat(0, 0.45, "ll")
    s.beat(0.95, 0.06, "l".repeat(14), 0.5)
  },
  flawless: (s) => {
    s.mel(0, 0.05, "C6 E6 G6 B6 D7 B6 G6 E6 D6 F#6 A6 C#7 E7", { w: "sine", g: 0.15, p: 1, gate: 3 })
    s.bell(0.7, "E6", 0.25, 1.2).noise(0.6, 1.2, { hp: 8000, g: 0.08, trem: [23, 0.4] })
  },
  glados: (s) => {
    const t = s.say(0, "o:.14:440 ho:.14:392 he:.2:523 lo:.3:440 -:.1 i:.14:392 i:.14:494 yu:.35:330", { w: "square", g: 0.35, trem: [35, 0.2] })
    for (let i = 0; i < 10; i++) s.tone(t + i * 0.04, 0.035, 200 + s.rand() * 1500, { w: "square", g: 0.12 })
  },
  gogogo: (s) => {
    s.tone(0, 0.35, 2900, { w: "sine", g: 0.2, trem: [28, 0.4] })
    s.say(0.45, "go:.24:190>175 -:.1 go:.24:220>205 -:.1 go:.5:260>290>220", { g: 0.75 })
  },
  greatjob: (s) => s.claps(0, 2.8, 220, 0.35),
  greyjoy: (s) => {
    const horn = { w: "sawtooth", lp: 1200, g: 0.35, a: 0.08 }
    s.tone(0, 1, [147, 140, 152, 145], { ...horn, vib: [4, 40] })
    s.tone(0.95, 0.35, [600, 760, 540], { w: "square", g: 0.12, bp: 1500 })
    s.tone(1.3, 0.8, [150, 90], { ...horn, vib: [9, 80] })
  },
  guarantee: (s) => s.bell(s.say(0, "a:.2:90 ga:.14:95 ra:.14:88 nti:.55:82>74 i:.2:72", { g: 0.8 }) + 0.1, "A5", 0.2, 1.2),
  heygirl: (s) => {
    const keys = { w: "sine", g: 0.2, p: 1, trem: [5, 0.2] }
    s.chord(0, 1.2, "F3+A3+E4+G4+C5", keys).chord(1.2, 1.5, "E3+G3+D4+F#4+B4", keys)
    s.mel(0.8, 0.06, "C7 A6 E7 G6 C7", { w: "sine", g: 0.08, p: 1, gate: 3 })
  },
  honk: (s) => [0, 0.4].forEach((t) => s.tone(t, 0.28 + t / 4, [330, 430, 370], { w: "sawtooth", v: "ao", g: 0.6 })),
  horn: (s) => [0, 0.3].forEach((t) => s.chord(t, t * 3 || 0.2, [349, 440], { w: "square", g: 0.2, lp: 2200 })),
  horror: (s) => {
    s.echo = [0.3, 0.4]
    s.chord(0, 2.6, "C4+C#4+D4+F#4+G4", { w: "sawtooth", g: 0.12, a: 1.2, r: 0.6, trem: [11, 0.3], lp: 2500 })
    s.tone(0, 2.6, "C2", { w: "sawtooth", g: 0.25, a: 0.5, lp: 300 })
    for (let i = 0; i < 5; i++) s.chord(1.3 + i * 0.22, 0.18, "E6+F6", { w: "sawtooth", g: 0.12, bp: 2500, q: 1 })
  },
  inconceivable: (s) => s.say(0, "i:.12:170 nko:.16:190 nsei:.28:240>220 va:.16:200 bu:.4:190>140", { g: 0.7, vib: [5, 25] }),
  letitgo: (s) => {
    s.mel(0, 0.75, "F3+C4+Ab4 Db3+Ab3+F4 Ab2+Eb3+C4 Eb3+Bb3+G4", { g: 0.25, a: 0.003, p: 1, gate: 1 })
    s.mel(0.35, 0.15, "C5 Eb5 F5:2 Ab5 G5 Eb5:2 C5 Eb5 F5:2 G5 Ab5 Bb5:2 C6:3", { w: "sine", g: 0.25, vib: [5, 12, 0.15] })
    s.bell(3, "G6", 0.06, 0.8)
  },
  live: (s) => {
    let t = 0
    for (let i = 0; i < 40; i++, t += 0.07 - i * 0.001) s.hit("s", t, 0.25 + i / 60)
    s.hit("c", t).hit("k", t)
  },
  loggins: (s) => {
    s.mel(0, 0.14, "E2+B2+E3 E2+B2+E3 r E2+B2+E3 r E2+B2+E3 G2+D3+G3:2 A2+E3+A3:2 r E2+B2+E3 E2+B2+E3 r D3+A3+D4:2 E3+B3+E4:4", { w: "sawtooth", uni: [-15, 0, 15], lp: 1800, g: 0.2, p: 1, strum: 0.01 })
    s.beat(0, 0.14, "k.s.k.s.kks.k.s.c")
  },
  makeitso: (s) => {
    s.mel(0, 0.1, "E6 A6", { w: "sine", g: 0.25, gate: 0.8 })
    s.tone(0.35, 2, [50, 60, 110], { w: "sawtooth", g: 0.4, a: 0.5, lp: 400 })
    s.noise(0.6, 1.7, { bp: [200, 5000], q: 3, g: 0.6, a: 1.2, r: 0.4 })
  },
  noooo: (s) => {
    s.echo = [0.25, 0.3]
    s.say(0, "no:2.6:440>380>150", { g: 0.75, vib: [5.5, 50, 0.3] })
  },
  nyan: (s) => {
    s.mel(0, 0.09, "E6 C#6 B5 C#6 E6 r F#6 E6 C#6 B5 G#5 B5 C#6 r B5 r ".repeat(2), { w: "square", g: 0.2, gate: 0.8 })
    s.mel(0, 0.18, "A2 A3 F#2 F#3 D2 D3 E2 E3 ".repeat(2), { w: "square", g: 0.2, lp: 1200, gate: 0.6 })
  },
  ohmy: (s) => s.say(0, "o:.4:210>180 -:.12 mai:1.6:170>250>200", { g: 0.7, vib: [5, 45, 0.3] }),
  ohyeah: (s) => {
    s.noise(0, 0.8, { lp: [3000, 300], g: 0.9, p: 1 }).hit("k", 0, 1.2)
    for (let i = 0; i < 12; i++) s.noise(0.1 + s.rand() * 0.6, 0.05, { bp: 600 + s.rand() * 2000, q: 3, g: 0.4, p: 1 })
    s.say(0.75, "o:.35:125>135 yea:.9:150>175>120", { g: 0.9, vib: [5, 30, 0.3] })
  },
  pushit: (s) => {
    s.mel(0, 0.13, "E2 r E2 G2 r E2 A2 G2 E2 r E2 G2 r B2 A2 G2", { w: "square", lp: [1500, 300], g: 0.3, gate: 0.7 })
    s.beat(0, 0.13, "k..xk.x.k..xk.xk")
    s.say(2.1, "a:.3:220 pu:.15:200 shi:.35:190>150", { g: 0.6 })
  },
  rimshot: (s) => s.hit("t", 0).hit("s", 0.16, 0.6).hit("l", 0.16).hit("k", 0.42).hit("c", 0.42),
  rollout: (s) => {
    for (let i = 0; i < 6; i++) s.noise(i * 0.09, 0.07, { lp: 600, g: 0.5 })
    s.tone(0.55, 2.9, [40, 55, 110, 60, 130, 70, 180], { w: "sawtooth", lp: 600, g: 0.5, a: 0.05, r: 0.8, trem: [25, 0.3] })
  },
  rumble: (s) => {
    s.noise(0, 3.4, { bp: 900, q: 0.7, g: 0.25, a: 1.5, r: 0.6 })
    s.say(0, "le:.12:140 tsge:.14:150 re:.12:160 di:.14:175 tu:.14:185 ru:1.5:200>260>250 mbu:.6:240>140", { g: 0.8, vib: [6, 35, 0.3] })
  },
  sax: (s) => {
    s.chord(0, 3.2, "F3+A3+C4+E4", { w: "sine", g: 0.08, a: 0.6, r: 1 })
    s.mel(0, 0.2, "D5:1.5 C5:.5 A4 G4:.5 A4:2.5 r:.5 C5 D5 F5 E5:.5 D5:3", { w: "sawtooth", v: "a", g: 0.4, a: 0.04, gate: 1, vib: [5, 25, 0.15] })
  },
  secret: (s) => {
    const t = s.mel(0, 0.07, "C5 E5 G5 C6 D5 F#5 A5 D6 E5 G#5 B5 E6", { w: "square", g: 0.3, gate: 0.8 })
    s.mel(t + 0.1, 0.08, "B5 E6:8", { w: "square", g: 0.4, p: 1 })
  },
  sexyback: (s) => {
    s.beat(0, 0.15, "k.h.shh.kkh.sh.h")
    s.mel(0, 0.6, "E3+G3+B3 E3+G3+B3 D3+F#3+A3 C3+E3+G3", { w: "sawtooth", uni: [-10, 10], lp: [300, 3000, 400], q: 6, g: 0.12, gate: 0.6 })
  },
  story: (s) => {
    const harp = "C4 D4 E4 G4 A4 C5 D5 E5 G5 A5 C6 D6 E6 G6".split(" ")
    ;[...harp, ...harp.reverse()].forEach((n, i) => s.tone(i * 0.04, 0.8, n, { g: 0.15, a: 0.002, p: 1 }))
    ;["E6", "C6", "D6", "G5"].forEach((n, i) => s.bell(1.2 + i * 0.35, n, 0.2, i === 3 ? 1.4 : 0.6))
  },
  tada: (s) => {
    s.mel(0, 0.1, "G4+C5 G4+C5 G4+C5 C5+E5+G5:2 r C5+E5+G5+C6:12", { ...BRASS, gate: 0.85, vib: [5, 10, 0.3] })
    s.hit("c", 0.6).hit("l", 0.6)
  },
  tmyk: (s) => {
    s.echo = [0.25, 0.35]
    s.noise(0, 0.9, { bp: [400, 6000], q: 4, g: 0.4, a: 0.7, r: 0.2 }).tone(0, 0.9, [300, 2400], { w: "sine", g: 0.1, a: 0.6 })
    ;["G5", "C6", "E6", "G6"].forEach((n, i) => s.bell(0.9 + i * 0.18, n, 0.2, 2 - i * 0.2))
  },
  totes: (s) => s.mel(0, 0.125, "C4+G4+C5+E5:2 C4+G4+C5+E5 D4+G4+B4+D5:2 C4+G4+C5+E5:8", { g: 0.2, a: 0.002, p: 1, gate: 2, strum: 0.018 }),
  trololo: (s) => s.say(0, "o:.3:A4>G#4 lo:.12:A4 lo:.12:B4 lo:.12:C5 lo:.36:E5 lo:.12:D5 lo:.12:C5 lo:.12:B4 lo:.36:C5 -:.1 lo:.12:B4 lo:.12:A4 lo:.12:G#4 lo:.4:A4 ha:.1:E5 ha:.1:D5 ha:.25:C5", { g: 0.6, vib: [5.5, 30, 0.1] }),
  trombone: (s) => s.say(0, "wua:.45:A3 wua:.45:G#3 wua:.45:G3 wua:1.5:F#3>F#3>E3", { g: 0.7, vib: [5, 45, 0.45] }),
  unix: (s) => {
    for (let i = 0; i < 24; i++) s.tone(i * 0.07, 0.05, 600 + ((s.rand() * 8) | 0) * 250, { w: "square", g: 0.25 })
    for (let i = 0; i < 30; i++) s.noise(s.rand() * 1.8, 0.015, { bp: 4000, q: 2, g: 0.6 })
  },
  vuvuzela: (s) => s.tone(0, 3, ["Bb3", 236, 231, 233], { w: "sawtooth", uni: [-10, -3, 4, 12], v: "a", g: 0.7, a: 0.15, r: 0.3, vib: [7, 12] }),
  what: (s) => s.noise(0, 0.25, { bp: [800, 3000, 600], q: 3, g: 0.5 }).say(0.35, "wua:.55:140>300", { g: 0.75 }),
  whoomp: (s) => {
    s.tone(0, 0.9, [110, 38], { w: "sine", g: 1, p: 1 }).say(0, "wuo:.35:110>90", { g: 0.6 })
    s.say(0.7, "de:.14:220 ri:.14:230 ti:.35:280>220", { g: 0.65 })
    s.beat(0.7, 0.14, "k.hxk.hx")
    s.tone(1.85, 0.5, 2400, { w: "sine", g: 0.15, trem: [25, 0.4] })
  },
  wups: (s) => s.tone(0, 0.35, [1800, 450], { w: "sine", g: 0.35 }).hit("l", 0.38).noise(0.38, 0.1, { bp: 500, g: 0.3 }),
  yay: (s) => {
    [220, 262, 300, 340, 390, 450].forEach((f, i) => s.tone(i * 0.04, 1.3, [f, f * 1.35, f * 1.15], { w: "sawtooth", v: "ea", g: 0.22, vib: [6, 30] }))
    s.tone(0.2, 0.6, [520, 560], { w: "square", g: 0.1, lp: 2000, trem: [18, 0.4] })
    s.claps(0.3, 2.2, 120, 0.35)
  },
  yeah: (s) => {
    s.echo = [0.19, 0.45]
    s.say(0, "yiea:.55:260>300>200", { g: 0.85 })
  },
  yodel: (s) => s.say(0, "yo:.2:G3 de:.14:D5 lei:.2:B3 hi:.25:G5 hu:.2:D4 yo:.16:B4 de:.16:G3 lei:.22:D5 hi:.45:G5", { g: 0.6, vib: [6, 30, 0.1] }),
}

export const SOUND_NAMES = Object.freeze(Object.keys(RECIPES).sort())

function compose(name) {
  if (!Object.hasOwn(RECIPES, name)) throw new Error(`unknown sound: ${name}`)
  const score = new Score([...name].reduce((hash, char) => (Math.imul(hash, 31) + char.charCodeAt(0)) | 0, 7))
  RECIPES[name](score)
  return score
}

// Scheduling a Score on any BaseAudioContext ----------------------------------

function noiseBuffer(context) {
  const buffer = context.createBuffer(1, NOISE_LENGTH_S * context.sampleRate, context.sampleRate), rand = random(1)
  buffer.getChannelData(0).forEach((_, i, data) => (data[i] = rand() * 2 - 1))
  return buffer
}

// param through values (exponentially), evenly over duration from time.
function ramp(param, values, time, duration) {
  param.setValueAtTime(values[0], time)
  values.forEach((value, i) => i && param.exponentialRampToValueAtTime(value, time + (duration * i) / (values.length - 1)))
}

// A low-frequency oscillator's gain node: rate Hz, depth, and an optional delay before it fades in.
function lfo(context, [rate, depth, delay], time, end) {
  const oscillator = context.createOscillator(), amount = context.createGain()
  oscillator.frequency.value = rate
  if (delay == null) amount.gain.value = depth
  else amount.gain.setValueAtTime(0, time + delay), amount.gain.linearRampToValueAtTime(depth, time + delay + 0.15)
  oscillator.connect(amount)
  oscillator.start(time)
  oscillator.stop(end)
  return amount
}

// One note of a Score: sources → filter → formant bank → tremolo → envelope → out.
function scheduleNote(context, out, note, startTime, noise) {
  const time = startTime + note.t, end = time + note.d, envelope = context.createGain(), level = envelope.gain
  level.setValueAtTime(0, time)
  level.linearRampToValueAtTime(note.g, time + note.a)
  if (note.p) level.exponentialRampToValueAtTime(note.g / 1000 || 1e-6, end)
  else level.setValueAtTime(note.g, Math.max(time + note.a, end - note.r)), level.linearRampToValueAtTime(0, end)
  envelope.connect(out)
  let sink = envelope
  const chain = (node) => (node.connect(sink), (sink = node))
  if (note.trem) {
    const tremolo = chain(context.createGain())
    tremolo.gain.value = 1 - note.trem[1]
    lfo(context, note.trem, time, end).connect(tremolo.gain)
  }
  if (note.v) {
    const bank = context.createGain()
    FORMANT_GAINS.forEach((gain, k) => {
      const band = context.createBiquadFilter(), bandLevel = context.createGain()
      band.type = "bandpass"
      band.Q.value = 8
      ramp(band.frequency, [...note.v].map((vowel) => VOWELS[vowel][k]), time, note.d)
      bandLevel.gain.value = gain
      bank.connect(band).connect(bandLevel).connect(sink)
    })
    sink = bank
  }
  const [type, frequency] = Object.entries({ lowpass: note.lp, bandpass: note.bp, highpass: note.hp }).find(([, f]) => f) ?? []
  if (type) {
    const filter = chain(context.createBiquadFilter())
    filter.type = type
    filter.Q.value = note.q ?? 1
    ramp(filter.frequency, hzList(frequency), time, note.d)
  }
  const play = (source, offset = 0) => (source.connect(sink), source.start(time, offset), source.stop(end))
  if (note.w === "noise") {
    const source = context.createBufferSource()
    source.buffer = noise
    source.loop = true
    play(source, note.off)
  } else {
    const detunes = note.uni ?? [0], vibrato = note.vib && lfo(context, note.vib, time, end)
    chain(context.createGain()).gain.value = 1 / detunes.length
    for (const cents of detunes) {
      const oscillator = context.createOscillator()
      oscillator.type = note.w
      oscillator.detune.value = cents
      ramp(oscillator.frequency, note.f, time, note.d)
      vibrato?.connect(oscillator.detune)
      play(oscillator)
    }
  }
}

// Master gain → compressor → tanh soft clip, so no sound can ever clip.
function scheduleScore(context, score, startTime) {
  const master = context.createGain(), compressor = context.createDynamicsCompressor(), clip = context.createWaveShaper()
  master.gain.value = MASTER_GAIN
  for (const [key, value] of Object.entries(COMPRESSOR)) compressor[key].value = value
  clip.curve = Float32Array.from({ length: 1025 }, (_, i) => Math.tanh(i / 512 - 1))
  master.connect(compressor).connect(clip).connect(context.destination)
  if (score.echo) {
    const delay = context.createDelay(1), feedback = context.createGain()
    ;[delay.delayTime.value, feedback.gain.value] = score.echo
    master.connect(delay).connect(feedback).connect(delay)
    feedback.connect(compressor)
  }
  const noise = noiseBuffer(context)
  for (const note of score.events) scheduleNote(context, master, note, startTime, noise)
}

class SoundBoard {
  #context = null
  #muted = false  // used only where localStorage throws

  get muted() {
    try { return localStorage.getItem(MUTED_KEY) === "true" } catch { return this.#muted }
  }

  set muted(flag) {
    this.#muted = !!flag
    try { flag ? localStorage.setItem(MUTED_KEY, "true") : localStorage.removeItem(MUTED_KEY) } catch {}
  }

  async play(name) {
    if (this.muted || !Object.hasOwn(RECIPES, name)) return
    // No audio before a user gesture: don't even create the context.
    if (navigator.userActivation && !navigator.userActivation.hasBeenActive) return
    try {
      const context = (this.#context ??= new AudioContext())
      if (context.state !== "running") {
        await Promise.race([context.resume(), new Promise((resolve) => setTimeout(resolve, RESUME_TIMEOUT_MS))])
      }
      if (context.state === "running") scheduleScore(context, compose(name), context.currentTime + START_DELAY_S)
    } catch {}  // no audio device or no Web Audio: stay silent
  }
}

const board = new SoundBoard()

export const playSound = (name) => board.play(name)
export const isMuted = () => board.muted
export const setMuted = (flag) => { board.muted = flag }

export async function renderSound(name, sampleRate = 22050) {
  const score = compose(name)
  const context = new OfflineAudioContext(1, Math.ceil(score.length * sampleRate), sampleRate)
  scheduleScore(context, score, 0)
  return context.startRendering()
}
