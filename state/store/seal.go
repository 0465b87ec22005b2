package store

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/state/impl/store/encryption"
	"go.etcd.io/bbolt"
)

// KeySize is the length of the key WithEncryptionKey takes: AES-256.
const KeySize = 32

// Errors of encryption at rest, for errors.Is; the messages they are wrapped in name the file.
var (
	// ErrNoKey: the file holds encrypted resources (or a sensitive resource is being written) and the store was
	// opened without a key.
	ErrNoKey = errors.New("no encryption key")
	// ErrWrongKey: the file was encrypted with another key; it is left untouched.
	ErrWrongKey = errors.New("the file was encrypted with another key")
)

// sealedFormat is the first byte of an encrypted resource: COSI's encryption.Cipher lays it out as
// 0x01 | 12-byte nonce | AES-GCM ciphertext and tag. A resource marshaled in clear is a protobuf message whose
// first byte is a field tag, and field number 0 does not exist, so it never starts with 0x01.
const sealedFormat = 0x01

// keyCheckPlaintext is sealed into the meta bucket with the store's key when the key is first used on a file, so
// that a later Open with another key is refused before it reads or writes anything else.
var keyCheckPlaintext = []byte("upshift state key check v1")

// keyKeyCheck is the meta key of the sealed key check.
var keyKeyCheck = []byte("key-check")

// codec turns resources into the bytes stored in the state, snapshot and log buckets and back. Every resource whose
// type is declared sensitive (its resource definition's Sensitivity, the one place a type says it holds secrets)
// is sealed with AES-GCM before it reaches bbolt; the others are stored as COSI's protobuf marshaling has them.
// Reading decides by the stored bytes, not by the type, so a file keeps reading what it holds whatever the types
// declare today.
type codec struct {
	cipher *encryption.Cipher // nil: the store has no key, and refuses to write sensitive resources
}

func newCodec(key []byte) (codec, error) {
	if key == nil {
		return codec{}, nil
	}

	if len(key) != KeySize {
		return codec{}, fmt.Errorf("encryption key is %d bytes long; AES-256 needs %d", len(key), KeySize)
	}

	key = bytes.Clone(key) // the caller may reuse its slice

	return codec{cipher: encryption.NewCipher(encryption.KeyProviderFunc(func() ([]byte, error) { return key, nil }))}, nil
}

// Sensitive reports whether r's type declares that it holds secrets (meta.Sensitive in its resource definition):
// such resources are encrypted at rest and redacted in what the API shows.
func Sensitive(r resource.Resource) bool {
	p, ok := r.(meta.ResourceDefinitionProvider)

	return ok && p.ResourceDefinition().Sensitivity == meta.Sensitive
}

// marshal encodes res for storage, sealing it if its type is sensitive.
func (c codec) marshal(res resource.Resource) ([]byte, error) {
	data, err := marshaler.MarshalResource(res)
	if err != nil {
		return nil, err
	}

	if !Sensitive(res) {
		return data, nil
	}

	if c.cipher == nil {
		return nil, fmt.Errorf("%w: %s is sensitive and is stored only encrypted (open the store with WithEncryptionKey)", ErrNoKey, res.Metadata().Type())
	}

	sealed, err := c.cipher.Encrypt(data)
	if err != nil {
		return nil, fmt.Errorf("encrypting: %w", err)
	}

	return sealed, nil
}

// unmarshal decodes stored bytes, opening them first if they are sealed. Its errors never quote the bytes.
func (c codec) unmarshal(data []byte) (resource.Resource, error) { //nolint:ireturn
	if sealed(data) {
		if c.cipher == nil {
			return nil, fmt.Errorf("%w: the resource is encrypted", ErrNoKey)
		}

		opened, err := c.cipher.Decrypt(data)
		if err != nil {
			return nil, fmt.Errorf("decrypting: %w", err)
		}

		data = opened
	}

	return marshaler.UnmarshalResource(data)
}

// sealed reports whether stored bytes are encrypted.
func sealed(data []byte) bool {
	return len(data) > 0 && data[0] == sealedFormat
}

// checkKey binds a file to the store's key. A file that has a key check is opened only with the key that made it
// (ErrWrongKey) and never without one (ErrNoKey), so no later write can mix keys or add clear secrets to it. A
// file without a check (new, or written before encryption at rest) gets one when a key is given: from then on
// its sensitive resources are written encrypted (see warnClearSecrets for what an older file still holds).
func (s *Store) checkKey() error {
	var check []byte

	if err := s.db.View(func(tx *bbolt.Tx) error {
		check = bytes.Clone(tx.Bucket(bucketMeta).Get(keyKeyCheck))

		return nil
	}); err != nil {
		return fmt.Errorf("reading state %q: %w", s.path, err)
	}

	sealed, err := s.codec.keyCheck(s.path, check)
	if err != nil || sealed == nil {
		return err
	}

	if err = s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyKeyCheck, sealed) }); err != nil {
		return fmt.Errorf("opening state %q: storing the key check: %w", s.path, err)
	}

	return nil
}

// keyCheck is the one rule that binds a state (named by where, for errors) to its key, for every backend: given the
// state's stored key check (nil when it has none), it refuses a key other than the one that made the check
// (ErrWrongKey) and a missing key (ErrNoKey), and returns the check to store when the state has none and a key is
// given (nil when there is nothing to store).
func (c codec) keyCheck(where string, check []byte) ([]byte, error) {
	switch {
	case check != nil && c.cipher == nil:
		return nil, fmt.Errorf("opening state %q: %w: its secrets are encrypted at rest; open it with its key", where, ErrNoKey)
	case check != nil:
		opened, err := c.cipher.Decrypt(check)
		if err != nil || !bytes.Equal(opened, keyCheckPlaintext) {
			return nil, fmt.Errorf("opening state %q: %w; refusing to open it (nothing was changed): give the key it was created with", where, ErrWrongKey)
		}

		return nil, nil
	case c.cipher == nil:
		return nil, nil
	}

	sealed, err := c.cipher.Encrypt(keyCheckPlaintext)
	if err != nil {
		return nil, fmt.Errorf("opening state %q: sealing the key check: %w", where, err)
	}

	return sealed, nil
}
