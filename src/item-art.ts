// Item art: names and images drawn from an item's seed; pure, no I/O.

// mulberry32: a tiny, well-known deterministic PRNG; the same seed always draws the same item.
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pick<T>(next: () => number, list: readonly T[]): T {
  return list[Math.floor(next() * list.length)] as T;
}

const adjectives = [
  'Ancient', 'Brave', 'Bright', 'Calm', 'Clever', 'Cosmic', 'Crimson', 'Daring', 'Electric', 'Elegant',
  'Fabled', 'Fierce', 'Gentle', 'Gilded', 'Glowing', 'Grand', 'Hidden', 'Humble', 'Infinite', 'Lucky',
  'Midnight', 'Mighty', 'Misty', 'Noble', 'Polar', 'Quiet', 'Radiant', 'Rapid', 'Royal', 'Silent',
  'Solar', 'Swift', 'Tidal', 'Velvet', 'Vivid', 'Wild',
] as const;
const materials = [
  'Amber', 'Bamboo', 'Bronze', 'Carbon', 'Ceramic', 'Cobalt', 'Copper', 'Crystal', 'Denim', 'Ebony',
  'Granite', 'Jade', 'Leather', 'Linen', 'Marble', 'Oak', 'Obsidian', 'Onyx', 'Pearl', 'Quartz',
  'Silk', 'Silver', 'Slate', 'Titanium', 'Walnut', 'Wool',
] as const;
const nouns = [
  'Backpack', 'Bicycle', 'Blender', 'Boots', 'Camera', 'Candle', 'Chair', 'Clock', 'Compass', 'Drone',
  'Guitar', 'Headphones', 'Helmet', 'Jacket', 'Kettle', 'Keyboard', 'Lamp', 'Lantern', 'Mug', 'Notebook',
  'Pen', 'Radio', 'Scarf', 'Sneakers', 'Speaker', 'Sunglasses', 'Teapot', 'Telescope', 'Tent', 'Umbrella',
  'Vase', 'Wallet', 'Watch', 'Skateboard',
] as const;
const editions = ['', '', '', ' Mk II', ' Pro', ' Mini', ' Max', ' Classic', ' Limited'] as const;

export function itemName(seed: number): string {
  const next = random(seed);
  return `${pick(next, adjectives)} ${pick(next, materials)} ${pick(next, nouns)}${pick(next, editions)}`;
}

function hsl(hue: number, saturation: number, lightness: number): string {
  return `hsl(${Math.round(hue)} ${saturation}% ${lightness}%)`;
}

// An SVG of 256×256: a two-colour gradient and a few shapes, every choice drawn from the seed.
export function itemImage(seed: number): string {
  const next = random(seed ^ 0x5bd1e995);
  const hue = next() * 360;
  const shapes: string[] = [];
  const count = 3 + Math.floor(next() * 4);
  for (let index = 0; index < count; index += 1) {
    const fill = hsl((hue + 60 + next() * 240) % 360, 55 + Math.floor(next() * 35), 45 + Math.floor(next() * 30));
    const x = Math.round(32 + next() * 192);
    const y = Math.round(32 + next() * 192);
    const size = Math.round(18 + next() * 60);
    const opacity = (0.55 + next() * 0.4).toFixed(2);
    const kind = Math.floor(next() * 3);
    if (kind === 0) {
      shapes.push(`<circle cx="${x}" cy="${y}" r="${size}" fill="${fill}" fill-opacity="${opacity}"/>`);
    } else if (kind === 1) {
      const angle = Math.round(next() * 90);
      shapes.push(
        `<rect x="${x - size}" y="${y - size}" width="${size * 2}" height="${size * 2}" rx="${Math.round(size / 4)}" ` +
          `fill="${fill}" fill-opacity="${opacity}" transform="rotate(${angle} ${x} ${y})"/>`,
      );
    } else {
      const points = [0, 1, 2].map((corner) => {
        const angle = next() * Math.PI * 2 + (corner * Math.PI * 2) / 3;
        return `${Math.round(x + Math.cos(angle) * size)},${Math.round(y + Math.sin(angle) * size)}`;
      });
      shapes.push(`<polygon points="${points.join(' ')}" fill="${fill}" fill-opacity="${opacity}"/>`);
    }
  }
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 256 256" width="256" height="256">` +
    `<defs><linearGradient id="g" x1="0" y1="0" x2="1" y2="1">` +
    `<stop offset="0" stop-color="${hsl(hue, 70, 88)}"/><stop offset="1" stop-color="${hsl((hue + 40) % 360, 60, 70)}"/>` +
    `</linearGradient></defs><rect width="256" height="256" fill="url(#g)"/>${shapes.join('')}</svg>`
  );
}
