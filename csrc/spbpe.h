// SentencePiece BPE with byte fallback, as Hugging Face `tokenizers` runs it (Llama 2, Mistral).
//
// The plain Python reference is lmfast/data/spbpe.py (`SentencePieceBpe.encode`); both merge by
// the same rules as tokenizers' `Word::merge_all`: a min-heap of (rank, position) over adjacent
// pairs, stale entries skipped when the pair no longer yields the entry's token (words of up to
// SMALL_WORD symbols run the equivalent linear scan). What makes this fast is outside the merge:
// the document is cut into words where the cut is proven not to change the ids (see spbpe.py),
// runs of plain ASCII are skipped without decoding, and each word's ids are cached in a flat
// table whose slot holds the key and the ids (one cache line a hit, no allocation). Ids are
// written straight into the caller's buffer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <queue>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace spbpe {


enum Prepend { PREPEND_NEVER = 0, PREPEND_NONEMPTY = 1, PREPEND_UNLESS_LEADING_SPACE = 2 };

static const uint32_t SPACE = 0x2581;      // SentencePiece's "▁"
static const uint32_t INVALID = 0xFFFFFFFFu;  // not a UTF-8 character: falls back to its byte token

// A fixed-size array of trivially copyable T; one of 2 MiB or more asks for huge pages (Linux
// madvise), since the word cache and the merge table are probed at random and 4 KiB pages would
// make most probes a TLB miss.
template <class T>
class HugeArray {
  public:
    HugeArray() = default;
    HugeArray(const HugeArray&) = delete;
    HugeArray& operator=(const HugeArray&) = delete;
    HugeArray(HugeArray&& other) noexcept : data_(other.data_), size_(other.size_) {
        other.data_ = nullptr;
        other.size_ = 0;
    }
    HugeArray& operator=(HugeArray&& other) noexcept {
        std::swap(data_, other.data_);
        std::swap(size_, other.size_);
        return *this;
    }
    ~HugeArray() { std::free(data_); }

    void assign(size_t n, const T& value) {
        std::free(data_);
        data_ = nullptr;
        size_ = 0;
        constexpr size_t HUGE_PAGE = 2 << 20;
        size_t bytes = std::max<size_t>(n * sizeof(T), 64);
        const size_t align = bytes >= HUGE_PAGE ? HUGE_PAGE : 64;
        bytes = (bytes + align - 1) / align * align;
        data_ = static_cast<T*>(std::aligned_alloc(align, bytes));
        if (data_ == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
        if (align == HUGE_PAGE) madvise(data_, bytes, MADV_HUGEPAGE);
#endif
        size_ = n;
        std::fill(data_, data_ + n, value);
    }
    size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }
    T& operator[](size_t i) { return data_[i]; }
    const T& operator[](size_t i) const { return data_[i]; }
    const T* begin() const { return data_; }
    const T* end() const { return data_ + size_; }

  private:
    T* data_ = nullptr;
    size_t size_ = 0;
};

// open addressing, uint64 keys (never ~0), linear probing; key and value side by side, so a probe
// touches one cache line
class PairMap {
  public:
    void insert(uint64_t key, uint64_t value) {
        if ((count_ + 1) * 2 > slots_.size()) grow();
        size_t at = slot(key);
        if (slots_[at].key == EMPTY) ++count_;
        slots_[at] = {key, value};
    }
    bool find(uint64_t key, uint64_t* value) const {
        if (slots_.empty()) return false;
        for (size_t at = hash(key) & mask_;; at = (at + 1) & mask_) {
            const Slot& slot = slots_[at];
            if (slot.key == key) {
                *value = slot.value;
                return true;
            }
            if (slot.key == EMPTY) return false;
        }
    }

  private:
    static constexpr uint64_t EMPTY = ~0ull;
    struct Slot {
        uint64_t key, value;
    };
    HugeArray<Slot> slots_;
    size_t mask_ = 0, count_ = 0;
    static size_t hash(uint64_t key) { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20); }
    size_t slot(uint64_t key) const {
        size_t at = hash(key) & mask_;
        while (slots_[at].key != EMPTY && slots_[at].key != key) at = (at + 1) & mask_;
        return at;
    }
    void grow() {
        HugeArray<Slot> old = std::move(slots_);
        size_t size = old.empty() ? 1024 : old.size() * 2;
        slots_.assign(size, Slot{EMPTY, 0});
        mask_ = size - 1;
        count_ = 0;
        for (const Slot& slot : old) {
            if (slot.key != EMPTY) insert(slot.key, slot.value);
        }
    }
};

struct Model {
    std::vector<int64_t> bmp_ids = std::vector<int64_t>(0x10000, -1);  // codepoint < 2^16 -> id or -1
    std::unordered_map<uint32_t, uint32_t> astral_ids;                 // the other codepoints
    uint32_t byte_ids[256] = {0};                                      // byte -> id of <0xXX>
    PairMap merges;  // left << 32 | right -> rank << 32 | new id
    int prepend = PREPEND_NEVER;
    bool cut_every_space = false;   // Metaspace split=True; else cut only before a space after a non-space
    bool cut_around_bytes = false;  // no merge involves a byte token: cut around characters without a token

    void add_char(uint32_t codepoint, uint32_t id) {
        if (codepoint < 0x10000) {
            bmp_ids[codepoint] = id;
        } else {
            astral_ids[codepoint] = id;
        }
    }
    void set_byte(int byte, uint32_t id) { byte_ids[byte & 0xFF] = id; }
    // a later duplicate replaces an earlier one, as in tokenizers' merge map
    void add_merge(uint32_t left, uint32_t right, uint32_t rank, uint32_t new_id) {
        merges.insert((static_cast<uint64_t>(left) << 32) | right, (static_cast<uint64_t>(rank) << 32) | new_id);
    }
    // what a byte of the raw text is, so the scan decodes only non-ASCII characters: PLAIN (an
    // ASCII character with a token: never a cut after another one), SPACE_BYTE (" "), NO_TOKEN (an
    // ASCII character with no token, cut around), OTHER (starts a multi-byte or invalid sequence)
    static constexpr uint8_t PLAIN = 0, SPACE_BYTE = 1, NO_TOKEN = 2, OTHER = 3;
    uint8_t byte_class[256] = {0};

    // after the characters and cut_around_bytes are set
    void finish() {
        for (uint32_t c = 0; c < 256; ++c) {
            if (c >= 0x80) {
                byte_class[c] = OTHER;
            } else if (c == ' ') {
                byte_class[c] = SPACE_BYTE;
            } else {
                byte_class[c] = cut_around_bytes && char_id(c) < 0 ? NO_TOKEN : PLAIN;
            }
        }
    }
    // the id of the codepoint's one-character token, or -1
    int64_t char_id(uint32_t codepoint) const {
        if (codepoint < 0x10000) return bmp_ids[codepoint];
        if (codepoint == INVALID) return -1;
        auto found = astral_ids.find(codepoint);
        return found == astral_ids.end() ? -1 : static_cast<int64_t>(found->second);
    }
};

// Words of up to 16 bytes (nearly all of them) -> ids, shared by the threads of one encode: open
// addressing over 32-byte slots that hold the key (its bytes zero-padded to two uint64) and up to
// 3 ids (more go to an arena), so a hit reads one cache line and allocates nothing, and a word is
// merged about once, not once per thread. `find` and `insert` may run concurrently: a slot is claimed by
// a compare-and-swap of its length byte and published by a release store of its length, so a
// reader sees a slot whole or not at all (a word being inserted may be inserted twice: harmless).
// The table never grows during an encode (a full one takes no more words); `reserve`, between
// encodes, grows it up to `max_slots` (a power of two) or clears it.
class SharedCache {
  public:
    static constexpr size_t MAX_KEY = 16, INLINE_IDS = 3;
    // the arena is allocated, not touched: pages are only used as ids are stored
    explicit SharedCache(size_t max_slots)
        : max_slots_(max_slots), arena_capacity_(max_slots * 4), arena_(new uint32_t[arena_capacity_]) {
        reset(std::min<size_t>(max_slots, 1 << 14));
    }

    const uint32_t* find(uint64_t k0, uint64_t k1, size_t length, uint64_t h, size_t* count) const {
        for (size_t at = h & mask_;; at = (at + 1) & mask_) {
            const Slot& slot = slots_[at];
            const uint8_t published = __atomic_load_n(&slot.length, __ATOMIC_ACQUIRE);
            if (published == length && slot.k0 == k0 && slot.k1 == k1) {
                *count = slot.count;
                return slot.count <= INLINE_IDS ? slot.ids : arena_.get() + slot.ids[0];
            }
            if (published == 0) return nullptr;
        }
    }
    // false when the word was not stored (the table is half full, or the arena is)
    bool insert(uint64_t k0, uint64_t k1, size_t length, uint64_t h, const uint32_t* ids, size_t count) {
        // a ticket per word, taken before its slot: the table never gets more than half full, so
        // every probe ends at an empty slot, however many threads insert at once
        if (__atomic_fetch_add(&used_, 1, __ATOMIC_RELAXED) * 2 >= slots_.size()) {
            __atomic_fetch_sub(&used_, 1, __ATOMIC_RELAXED);
            return false;
        }
        size_t at_arena = 0;
        if (count > INLINE_IDS) {
            at_arena = __atomic_fetch_add(&arena_used_, count, __ATOMIC_RELAXED);
            if (at_arena + count > arena_capacity_) {
                __atomic_fetch_sub(&used_, 1, __ATOMIC_RELAXED);
                return false;
            }
            std::copy(ids, ids + count, arena_.get() + at_arena);
        }
        for (size_t at = h & mask_;; at = (at + 1) & mask_) {
            Slot& slot = slots_[at];
            uint8_t expected = 0;
            if (__atomic_load_n(&slot.length, __ATOMIC_RELAXED) != 0 ||
                !__atomic_compare_exchange_n(&slot.length, &expected, CLAIMED, false, __ATOMIC_ACQUIRE,
                                             __ATOMIC_RELAXED)) {
                continue;
            }
            slot.k0 = k0;
            slot.k1 = k1;
            if (count > INLINE_IDS) {
                slot.ids[0] = static_cast<uint32_t>(at_arena);
            } else {
                std::copy(ids, ids + count, slot.ids);
            }
            slot.count = static_cast<uint8_t>(count);
            __atomic_store_n(&slot.length, static_cast<uint8_t>(length), __ATOMIC_RELEASE);
            return true;
        }
    }
    // Before an encode of about `words` new words (no encode may run): room for them, growing the
    // table up to max_slots, or an empty table when even that cannot hold them.
    void reserve(size_t words) {
        size_t target = slots_.size();
        while (target < max_slots_ && (used_ + words) * 2 > target) target *= 2;
        if (used_ * 2 >= max_slots_ / 2 && (used_ + words) * 2 > target) {
            reset(target);
        } else if (target > slots_.size()) {
            grow(target);
        }
    }
    // the hash of a key; the same function places and finds it
    static uint64_t hash(uint64_t k0, uint64_t k1, size_t length) {
        uint64_t h = (k0 ^ (k1 * 0x9E3779B97F4A7C15ull) ^ (static_cast<uint64_t>(length) << 58)) * 0xFF51AFD7ED558CCDull;
        return h ^ (h >> 29);
    }

  private:
    static constexpr uint8_t CLAIMED = 0xFF;  // a length no key has: being written
    struct Slot {
        uint64_t k0, k1;
        uint32_t ids[INLINE_IDS];  // the ids, or ids[0] = their offset in the arena
        uint8_t length, count;  // length 0: an empty slot (no word is empty)
        uint16_t pad;
    };
    static_assert(sizeof(Slot) == 32, "a slot is half a cache line");
    HugeArray<Slot> slots_;
    size_t max_slots_, mask_ = 0, used_ = 0;
    const size_t arena_capacity_;
    std::unique_ptr<uint32_t[]> arena_;
    size_t arena_used_ = 0;

    void reset(size_t size) {
        slots_.assign(size, Slot{0, 0, {0, 0, 0}, 0, 0, 0});
        mask_ = size - 1;
        used_ = 0;
        arena_used_ = 0;
    }
    void grow(size_t size) {
        HugeArray<Slot> old = std::move(slots_);
        const size_t arena_used = arena_used_;
        reset(size);
        arena_used_ = arena_used;  // the arena stays as it is
        for (const Slot& slot : old) {
            if (slot.length == 0 || slot.length == CLAIMED) continue;
            size_t at = hash(slot.k0, slot.k1, slot.length) & mask_;
            while (slots_[at].length != 0) at = (at + 1) & mask_;
            slots_[at] = slot;
            ++used_;
        }
    }
};

// Longer words -> ids: open addressing over two arenas; cleared when half full
class WordCache {
  public:
    explicit WordCache(size_t slots = 1 << 14) : slots_(slots), mask_(slots - 1) {}

    static uint64_t hash(const char* key, size_t length) {  // FNV-1a
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < length; ++i) h = (h ^ static_cast<uint8_t>(key[i])) * 1099511628211ull;
        return h | 1;  // 0 marks an empty slot
    }
    const uint32_t* find(const char* key, size_t length, uint64_t h, size_t* count) const {
        for (size_t at = h & mask_;; at = (at + 1) & mask_) {
            const Slot& slot = slots_[at];
            if (slot.hash == 0) return nullptr;
            if (slot.hash == h && slot.key_length == length &&
                std::memcmp(keys_.data() + slot.key_offset, key, length) == 0) {
                *count = slot.id_count;
                return ids_.data() + slot.id_offset;
            }
        }
    }
    void insert(const char* key, size_t length, uint64_t h, const uint32_t* ids, size_t count) {
        if (length > 0xFFFF || count > 0xFFFF) return;  // very long words are not worth caching
        if ((used_ + 1) * 2 > slots_.size()) clear();
        size_t at = h & mask_;
        while (slots_[at].hash != 0) at = (at + 1) & mask_;
        slots_[at] = {h, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(ids_.size()),
                      static_cast<uint16_t>(length), static_cast<uint16_t>(count)};
        keys_.append(key, length);
        ids_.insert(ids_.end(), ids, ids + count);
        ++used_;
    }

  private:
    struct Slot {
        uint64_t hash;
        uint32_t key_offset, id_offset;
        uint16_t key_length, id_count;
    };
    std::vector<Slot> slots_;
    size_t mask_, used_ = 0;
    std::string keys_;
    std::vector<uint32_t> ids_;

    void clear() {
        std::fill(slots_.begin(), slots_.end(), Slot{0, 0, 0, 0, 0});
        keys_.clear();
        ids_.clear();
        used_ = 0;
    }
};

struct Symbol {
    uint32_t id;
    int64_t prev, next;
    bool alive;
};

// one UTF-8 character at s[i..n): its codepoint (INVALID for a bad byte, then length 1) and length
inline size_t decode(const uint8_t* s, size_t i, size_t n, uint32_t* codepoint) {
    uint8_t c = s[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > n) {
        *codepoint = INVALID;
        return 1;
    }
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < len; ++k) {
        if ((s[i + k] & 0xC0) != 0x80) {
            *codepoint = INVALID;
            return 1;
        }
        cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    *codepoint = cp;
    return len;
}

// the key of a word of at most 16 bytes: its bytes, zero-padded, as two uint64; reads 16 bytes
// from s when `readable` (little-endian only), else copies
inline void short_key(const uint8_t* s, size_t length, bool readable, uint64_t* k0, uint64_t* k1) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (readable) {
        uint64_t a, b;
        std::memcpy(&a, s, 8);
        std::memcpy(&b, s + 8, 8);
        *k0 = length >= 8 ? a : a & ((1ull << (8 * length)) - 1);
        *k1 = length >= 16 ? b : length <= 8 ? 0 : b & ((1ull << (8 * (length - 8))) - 1);
        return;
    }
#else
    (void)readable;
#endif
    uint8_t padded[16] = {0};
    std::memcpy(padded, s, length);
    std::memcpy(k0, padded, 8);
    std::memcpy(k1, padded + 8, 8);
}

class Encoder {
  public:
    // `cache` is shared with the other encoders of the same model (see SharedCache)
    Encoder(const Model* model, SharedCache* cache) : model_(model), shared_cache_(cache) {}

    // Encode pieces data[offsets[i] - offsets[0] ..] for i < n into ids (room for at least
    // offsets[n] - offsets[0] + n ids: a piece gives at most one id per byte, plus a prepended
    // "▁"); out_offsets[1..n] the ends of their ids (out_offsets[0] is not written; it is 0).
    // Returns the number of ids.
    int64_t encode(const uint8_t* data, const int64_t* offsets, int64_t n, uint32_t* ids, int64_t* out_offsets) {
        const int64_t base = offsets[0];
        end_ = data + (offsets[n] - base);
        out_ = ids;
        for (int64_t i = 0; i < n; ++i) {
            encode_piece(data + (offsets[i] - base), static_cast<size_t>(offsets[i + 1] - offsets[i]));
            out_offsets[i + 1] = static_cast<int64_t>(out_ - ids);
        }
        return static_cast<int64_t>(out_ - ids);
    }

  private:
    const Model* model_;
    SharedCache* shared_cache_;
    WordCache own_cache_;  // longer words, and short ones with more ids than a shared slot holds
    const uint8_t* end_ = nullptr;  // the end of the readable input
    uint32_t* out_ = nullptr;       // where the next id goes
    std::vector<uint8_t> prefixed_;
    std::vector<Symbol> symbols_;
    std::vector<uint32_t> word_ids_;
    std::vector<uint32_t> small_ids_, small_ranks_, small_new_;
    using Entry = std::tuple<uint32_t, int64_t, uint32_t>;  // (rank, position, new id): smallest first
    std::vector<Entry> queue_;
    static constexpr uint32_t NO_MERGE = 0xFFFFFFFFu;
    static constexpr size_t SMALL_WORD = 48;  // symbols; longer words merge through the heap

    // Words are cut from the raw text, where " " stands for the "▁" it normalizes to; a prepended
    // "▁" becomes a " " in front of the first word's key.
    void encode_piece(const uint8_t* text, size_t n) {
        if (n == 0) return;
        uint32_t first;
        decode(text, 0, n, &first);
        const bool leading_space = text[0] == ' ' || first == SPACE;
        bool prefix = model_->prepend == PREPEND_NONEMPTY ||
                      (model_->prepend == PREPEND_UNLESS_LEADING_SPACE && !leading_space);
        const bool every_space = model_->cut_every_space, around_bytes = model_->cut_around_bytes;
        const uint8_t* classes = model_->byte_class;
        size_t start = 0, i = 0;
        bool previous_space = prefix, previous_bytes = false;
        while (i < n) {
            const uint8_t c = text[i];
            const uint8_t kind = classes[c];
            size_t len = 1;
            bool space = kind == Model::SPACE_BYTE, bytes = kind == Model::NO_TOKEN;
            if (kind == Model::OTHER) {
                uint32_t codepoint;
                len = decode(text, i, n, &codepoint);
                space = codepoint == SPACE;
                bytes = around_bytes && model_->char_id(codepoint) < 0;
            }
            if ((i > start || prefix) && ((space && (every_space || !previous_space)) || bytes || previous_bytes)) {
                emit(text + start, i - start, prefix);
                prefix = false;
                start = i;
            }
            previous_space = space;
            previous_bytes = bytes;
            i += len;
            // after a character that is neither a space nor without a token, plain ASCII never cuts
            if (!space && !bytes) {
                while (i < n && classes[text[i]] == Model::PLAIN) ++i;
            }
        }
        if (n > start || prefix) emit(text + start, n - start, prefix);
    }

    // the word raw[0..length) (after a " " when `prefix`): its ids from a cache, else merged
    void emit(const uint8_t* raw, size_t length, bool prefix) {
        const uint8_t* key = raw;
        bool readable = raw + SharedCache::MAX_KEY <= end_;
        if (prefix) {
            prefixed_.resize(length + 1 + SharedCache::MAX_KEY);
            prefixed_[0] = ' ';
            std::memcpy(prefixed_.data() + 1, raw, length);
            key = prefixed_.data();
            length += 1;
            readable = true;
        }
        size_t count;
        if (length <= SharedCache::MAX_KEY) {
            uint64_t k0, k1;
            short_key(key, length, readable, &k0, &k1);
            const uint64_t h = SharedCache::hash(k0, k1, length);
            const uint32_t* hit = shared_cache_->find(k0, k1, length, h, &count);
            if (hit != nullptr) {
                for (size_t k = 0; k < count; ++k) out_[k] = hit[k];
                out_ += count;
                return;
            }
        }
        const char* text = reinterpret_cast<const char*>(key);
        const uint64_t h = WordCache::hash(text, length);
        const uint32_t* hit = own_cache_.find(text, length, h, &count);
        if (hit == nullptr) {
            merge_word(key, length);
            hit = word_ids_.data();
            count = word_ids_.size();
            uint64_t k0, k1;
            if (length > SharedCache::MAX_KEY) {
                own_cache_.insert(text, length, h, hit, count);
            } else if (short_key(key, length, readable, &k0, &k1),
                       !shared_cache_->insert(k0, k1, length, SharedCache::hash(k0, k1, length), hit, count)) {
                own_cache_.insert(text, length, h, hit, count);
            }
        }
        std::memcpy(out_, hit, count * sizeof(uint32_t));
        out_ += count;
    }

    bool lookup(uint32_t left, uint32_t right, uint32_t* rank, uint32_t* new_id) const {
        uint64_t value;
        if (!model_->merges.find((static_cast<uint64_t>(left) << 32) | right, &value)) return false;
        *rank = static_cast<uint32_t>(value >> 32);
        *new_id = static_cast<uint32_t>(value & 0xFFFFFFFFu);
        return true;
    }
    uint32_t pair_rank(uint32_t left, uint32_t right, uint32_t* new_id) const {
        uint32_t rank;
        return lookup(left, right, &rank, new_id) ? rank : NO_MERGE;
    }

    // the word's symbols: one per character with a token, else one per byte
    void symbols_of(const uint8_t* s, size_t n, std::vector<uint32_t>& out) const {
        out.clear();
        for (size_t i = 0; i < n;) {
            uint32_t codepoint;
            size_t len = decode(s, i, n, &codepoint);
            if (codepoint == ' ') codepoint = SPACE;
            int64_t id = model_->char_id(codepoint);
            if (id >= 0) {
                out.push_back(static_cast<uint32_t>(id));
            } else {
                for (size_t k = 0; k < len; ++k) out.push_back(model_->byte_ids[s[i + k]]);
            }
            i += len;
        }
    }

    void merge_word(const uint8_t* s, size_t n) {
        symbols_of(s, n, word_ids_);
        if (word_ids_.size() <= SMALL_WORD) {
            merge_small();
        } else {
            merge_heap();
        }
    }

    // Few symbols: merge the pair of smallest rank, leftmost first, until none is left. This is
    // what the heap does: its stale entries never pass the check, since a merged token's text is
    // the concatenation of its pair's, and a position's pair only grows.
    void merge_small() {
        std::vector<uint32_t>& ids = word_ids_;
        size_t count = ids.size();
        if (count < 2) return;
        small_ranks_.resize(count);
        small_new_.resize(count);
        uint32_t* ranks = small_ranks_.data();
        uint32_t* news = small_new_.data();
        for (size_t k = 0; k + 1 < count; ++k) ranks[k] = pair_rank(ids[k], ids[k + 1], &news[k]);
        while (count > 1) {
            size_t best = 0;
            for (size_t k = 1; k + 1 < count; ++k) {
                if (ranks[k] < ranks[best]) best = k;
            }
            if (ranks[best] == NO_MERGE) break;
            ids[best] = news[best];
            for (size_t k = best + 1; k + 1 < count; ++k) {
                ids[k] = ids[k + 1];
                ranks[k] = ranks[k + 1];
                news[k] = news[k + 1];
            }
            --count;
            if (best > 0) ranks[best - 1] = pair_rank(ids[best - 1], ids[best], &news[best - 1]);
            if (best + 1 < count) ranks[best] = pair_rank(ids[best], ids[best + 1], &news[best]);
        }
        ids.resize(count);
    }

    // tokenizers' `Word::merge_all`: a min-heap of (rank, position), stale entries skipped
    void merge_heap() {
        symbols_.clear();
        for (uint32_t id : word_ids_) symbols_.push_back({id, 0, 0, true});
        const int64_t count = static_cast<int64_t>(symbols_.size());
        for (int64_t k = 0; k < count; ++k) {
            symbols_[k].prev = k - 1;
            symbols_[k].next = k + 1 < count ? k + 1 : -1;
        }
        std::vector<Entry>& queue = queue_;
        queue.clear();
        const auto later = std::greater<Entry>();
        uint32_t rank, new_id;
        for (int64_t k = 0; k + 1 < count; ++k) {
            if (lookup(symbols_[k].id, symbols_[k + 1].id, &rank, &new_id)) queue.emplace_back(rank, k, new_id);
        }
        std::make_heap(queue.begin(), queue.end(), later);
        while (!queue.empty()) {
            std::pop_heap(queue.begin(), queue.end(), later);
            auto [top_rank, pos, top_new] = queue.back();
            queue.pop_back();
            (void)top_rank;
            Symbol& current = symbols_[pos];
            if (!current.alive || current.next == -1) continue;
            const int64_t next = current.next;
            if (!lookup(current.id, symbols_[next].id, &rank, &new_id) || new_id != top_new) continue;
            current.id = top_new;
            current.next = symbols_[next].next;
            symbols_[next].alive = false;
            if (current.next != -1) symbols_[current.next].prev = pos;
            if (current.prev != -1 && lookup(symbols_[current.prev].id, current.id, &rank, &new_id)) {
                queue.emplace_back(rank, current.prev, new_id);
                std::push_heap(queue.begin(), queue.end(), later);
            }
            if (current.next != -1 && lookup(current.id, symbols_[current.next].id, &rank, &new_id)) {
                queue.emplace_back(rank, pos, new_id);
                std::push_heap(queue.begin(), queue.end(), later);
            }
        }
        word_ids_.clear();
        for (const Symbol& symbol : symbols_) {
            if (symbol.alive) word_ids_.push_back(symbol.id);
        }
    }
};

// Encode pieces [0, n) of (data, offsets) as Encoder::encode does, one thread per encoder over
// ranges of about equal bytes (the calling thread runs the first); each range writes its ids at
// its own upper bound in `ids`, then they are moved together. No other encode of these encoders
// may run meanwhile (the cache is reserved here).
inline int64_t encode_parallel(const std::vector<Encoder*>& encoders, SharedCache& cache, const uint8_t* data,
                               const int64_t* offsets, int64_t n, uint32_t* ids, int64_t* out_offsets) {
    out_offsets[0] = 0;
    if (n == 0) return 0;
    const int64_t base = offsets[0], bytes = offsets[n] - base;
    cache.reserve(static_cast<size_t>(bytes / 32 + 1));
    const int64_t by_size = std::max<int64_t>(1, bytes / (64 << 10));  // no thread for less than 64 KiB
    const int64_t workers = std::min<int64_t>({static_cast<int64_t>(encoders.size()), by_size, n});
    std::vector<int64_t> cuts(workers + 1, 0), counts(workers, 0);
    cuts[workers] = n;
    for (int64_t w = 1; w < workers; ++w) {
        const int64_t target = base + bytes * w / workers;
        cuts[w] = std::max(cuts[w - 1], static_cast<int64_t>(std::lower_bound(offsets, offsets + n, target) - offsets));
    }
    // range w's ids start at its bound: the bytes and pieces before it
    auto start = [&](int64_t w) { return (offsets[cuts[w]] - base) + cuts[w]; };
    std::vector<std::exception_ptr> errors(workers);
    auto run = [&](int64_t w) {
        try {
            const int64_t first = cuts[w];
            counts[w] = encoders[w]->encode(data + (offsets[first] - base), offsets + first, cuts[w + 1] - first,
                                            ids + start(w), out_offsets + first);
        } catch (...) {
            errors[w] = std::current_exception();
        }
    };
    std::vector<std::thread> threads;
    for (int64_t w = 1; w < workers; ++w) threads.emplace_back(run, w);
    run(0);
    for (std::thread& thread : threads) thread.join();
    for (const std::exception_ptr& error : errors) {
        if (error) std::rethrow_exception(error);
    }
    int64_t total = 0;
    for (int64_t w = 0; w < workers; ++w) {
        if (total != start(w)) std::memmove(ids + total, ids + start(w), counts[w] * sizeof(uint32_t));
        for (int64_t i = cuts[w] + 1; i <= cuts[w + 1]; ++i) out_offsets[i] += total;
        total += counts[w];
    }
    return total;
}

}  // namespace spbpe
