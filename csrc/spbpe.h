// SentencePiece BPE with byte fallback, as Hugging Face `tokenizers` runs it (Llama 2, Mistral).
//
// The plain Python reference is lmfast/data/spbpe.py (`SentencePieceBpe.encode`); both merge by
// the same rules as tokenizers' `Word::merge_all`: a min-heap of (rank, position) over adjacent
// pairs, stale entries skipped when the pair no longer yields the entry's token. What makes this
// fast is outside the merge: the document is cut into words where the cut is proven not to change
// the ids (see spbpe.py), and each word's ids are cached.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <queue>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace spbpe {


enum Prepend { PREPEND_NEVER = 0, PREPEND_NONEMPTY = 1, PREPEND_UNLESS_LEADING_SPACE = 2 };

static const uint32_t SPACE = 0x2581;      // SentencePiece's "▁"
static const uint32_t INVALID = 0xFFFFFFFFu;  // not a UTF-8 character: falls back to its byte token

// open addressing, uint64 keys (never ~0), linear probing
class PairMap {
  public:
    void insert(uint64_t key, uint64_t value) {
        if ((count_ + 1) * 2 > keys_.size()) grow();
        size_t at = slot(key);
        if (keys_[at] == EMPTY) ++count_;
        keys_[at] = key;
        values_[at] = value;
    }
    bool find(uint64_t key, uint64_t* value) const {
        if (keys_.empty()) return false;
        for (size_t at = hash(key) & mask_;; at = (at + 1) & mask_) {
            if (keys_[at] == key) {
                *value = values_[at];
                return true;
            }
            if (keys_[at] == EMPTY) return false;
        }
    }

  private:
    static constexpr uint64_t EMPTY = ~0ull;
    std::vector<uint64_t> keys_, values_;
    size_t mask_ = 0, count_ = 0;
    static size_t hash(uint64_t key) { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20); }
    size_t slot(uint64_t key) const {
        size_t at = hash(key) & mask_;
        while (keys_[at] != EMPTY && keys_[at] != key) at = (at + 1) & mask_;
        return at;
    }
    void grow() {
        std::vector<uint64_t> keys = std::move(keys_), values = std::move(values_);
        size_t size = keys.empty() ? 1024 : keys.size() * 2;
        keys_.assign(size, EMPTY);
        values_.assign(size, 0);
        mask_ = size - 1;
        count_ = 0;
        for (size_t i = 0; i < keys.size(); ++i) {
            if (keys[i] != EMPTY) insert(keys[i], values[i]);
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
    static constexpr uint8_t FLAG_SPACE = 1, FLAG_BYTES = 2;
    uint8_t ascii_flags[128] = {0};  // per ASCII byte of the raw text: " " (a space), no token (bytes)

    // after the characters and cut_around_bytes are set
    void finish() {
        for (uint32_t c = 0; c < 128; ++c) {
            uint32_t codepoint = c == ' ' ? SPACE : c;
            ascii_flags[c] = (codepoint == SPACE ? FLAG_SPACE : 0) |
                             (cut_around_bytes && char_id(codepoint) < 0 ? FLAG_BYTES : 0);
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

// word bytes -> ids, open addressing over two arenas; cleared when half full
class WordCache {
  public:
    explicit WordCache(size_t slots = 1 << 19) : slots_(slots), mask_(slots - 1) {}

    static constexpr uint64_t SEED = 1469598103934665603ull;  // FNV-1a, one byte at a time
    static uint64_t step(uint64_t h, uint8_t byte) { return (h ^ byte) * 1099511628211ull; }
    static uint64_t finish(uint64_t h) { return h | 1; }  // 0 marks an empty slot
    const uint32_t* find(const char* key, size_t length, uint64_t h, size_t* count) const {
        for (size_t at = h & mask_;; at = (at + 1) & mask_) {
            const Slot& slot = slots_[at];
            if (slot.hash == 0) return nullptr;
            if (slot.hash == h && slot.key_length == length && same(keys_.data() + slot.key_offset, key, length)) {
                *count = slot.id_count;
                return ids_.data() + slot.id_offset;
            }
        }
    }
    void insert(const char* key, size_t length, uint64_t h, const uint32_t* ids, size_t count) {
        if (length > 0xFFFF || count > 0xFFFF) return;  // long words are not worth caching
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
    // words are short: a loop beats a call to memcmp
    static bool same(const char* a, const char* b, size_t length) {
        for (size_t i = 0; i < length; ++i) {
            if (a[i] != b[i]) return false;
        }
        return true;
    }
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

class Encoder {
  public:
    explicit Encoder(const Model* model) : model_(model) {}

    // Encode pieces data[offsets[i] - offsets[0] ..] for i < n: ids appended to `ids`,
    // out_offsets[0..n] (out_offsets[0] = 0) their boundaries.
    void encode(const uint8_t* data, const int64_t* offsets, int64_t n, std::vector<uint32_t>& ids,
                int64_t* out_offsets) {
        const int64_t base = offsets[0];
        out_offsets[0] = 0;
        for (int64_t i = 0; i < n; ++i) {
            encode_piece(data + (offsets[i] - base), static_cast<size_t>(offsets[i + 1] - offsets[i]), ids);
            out_offsets[i + 1] = static_cast<int64_t>(ids.size());
        }
    }

  private:
    const Model* model_;
    WordCache cache_;
    std::string prefixed_;
    std::vector<Symbol> symbols_;
    std::vector<uint32_t> word_ids_;
    using Entry = std::tuple<uint32_t, int64_t, uint32_t>;  // (rank, position, new id): smallest first
    std::vector<Entry> queue_;

    // Words are cut from the raw text, where " " stands for the "▁" it normalizes to; a prepended
    // "▁" becomes a " " in front of the first word's key.
    void encode_piece(const uint8_t* text, size_t n, std::vector<uint32_t>& ids) {
        if (n == 0) return;
        uint32_t first;
        decode(text, 0, n, &first);
        const bool leading_space = text[0] == ' ' || first == SPACE;
        bool prefix = model_->prepend == PREPEND_NONEMPTY ||
                      (model_->prepend == PREPEND_UNLESS_LEADING_SPACE && !leading_space);
        const bool every_space = model_->cut_every_space, around_bytes = model_->cut_around_bytes;
        size_t start = 0, i = 0;
        bool previous_space = prefix, previous_bytes = false;
        uint64_t h = prefix ? WordCache::step(WordCache::SEED, ' ') : WordCache::SEED;  // FNV-1a of the word
        while (i < n) {
            const uint8_t c = text[i];
            size_t len = 1;
            bool space, bytes;
            if (c < 0x80) {
                space = model_->ascii_flags[c] & Model::FLAG_SPACE;
                bytes = model_->ascii_flags[c] & Model::FLAG_BYTES;
            } else {
                uint32_t codepoint;
                len = decode(text, i, n, &codepoint);
                space = codepoint == SPACE;
                bytes = around_bytes && model_->char_id(codepoint) < 0;
            }
            if ((i > start || prefix) && ((space && (every_space || !previous_space)) || bytes || previous_bytes)) {
                emit(text + start, i - start, prefix, WordCache::finish(h), ids);
                prefix = false;
                start = i;
                h = WordCache::SEED;
            }
            for (size_t k = 0; k < len; ++k) h = WordCache::step(h, text[i + k]);
            previous_space = space;
            previous_bytes = bytes;
            i += len;
        }
        if (n > start || prefix) emit(text + start, n - start, prefix, WordCache::finish(h), ids);
    }

    // the word raw[0..length) (after a " " when `prefix`), whose key hashes to h
    void emit(const uint8_t* raw, size_t length, bool prefix, uint64_t h, std::vector<uint32_t>& ids) {
        const char* key = reinterpret_cast<const char*>(raw);
        if (prefix) {
            prefixed_.assign(1, ' ');
            prefixed_.append(key, length);
            key = prefixed_.data();
            length = prefixed_.size();
        }
        size_t count;
        const uint32_t* hit = cache_.find(key, length, h, &count);
        if (hit != nullptr) {
            ids.insert(ids.end(), hit, hit + count);
            return;
        }
        merge_word(reinterpret_cast<const uint8_t*>(key), length);
        ids.insert(ids.end(), word_ids_.begin(), word_ids_.end());
        cache_.insert(key, length, h, word_ids_.data(), word_ids_.size());
    }

    bool lookup(uint32_t left, uint32_t right, uint32_t* rank, uint32_t* new_id) const {
        uint64_t value;
        if (!model_->merges.find((static_cast<uint64_t>(left) << 32) | right, &value)) return false;
        *rank = static_cast<uint32_t>(value >> 32);
        *new_id = static_cast<uint32_t>(value & 0xFFFFFFFFu);
        return true;
    }

    void merge_word(const uint8_t* s, size_t n) {
        symbols_.clear();
        for (size_t i = 0; i < n;) {
            uint32_t codepoint;
            size_t len = decode(s, i, n, &codepoint);
            if (codepoint == ' ') codepoint = SPACE;
            int64_t id = model_->char_id(codepoint);
            if (id >= 0) {
                symbols_.push_back({static_cast<uint32_t>(id), 0, 0, true});
            } else {
                for (size_t k = 0; k < len; ++k) symbols_.push_back({model_->byte_ids[s[i + k]], 0, 0, true});
            }
            i += len;
        }
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

}  // namespace spbpe
